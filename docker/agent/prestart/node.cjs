"use strict";
// isol8 pre-started node: the loader of an interpreter the agent started before its run.
//
// NODE_OPTIONS="--require" this file, with ISOL8_PRESTART_FD naming the handoff pipe: node loads it
// while it starts, before the main module. It waits here for the run: the working directory and
// the environment, NUL-separated (`cwd\0KEY=value\0...`), until the agent closes the pipe; it
// applies them and returns. Node then runs the main module of its command line as `node file`
// always does (the agent wrote the program there before the handoff): ESM or CommonJS by
// extension, `require.main`, `process.argv`, `import.meta.main`, error stacks and exit codes as
// usual. NODE_OPTIONS goes with the rest of the start environment, so process.execArgv and child
// processes never see it, and this file takes itself out of the module caches a program can read.
if (process.env.ISOL8_PRESTART_FD !== undefined) {
  const fs = require("fs");
  const fd = Number(process.env.ISOL8_PRESTART_FD);
  let chunks = [];
  const buffer = Buffer.allocUnsafe(65536);
  try {
    for (;;) {
      let n;
      try {
        n = fs.readSync(fd, buffer, 0, buffer.length, null);
      } catch (error) {
        if (error.code === "EAGAIN" || error.code === "EINTR") continue;
        throw error;
      }
      if (n === 0) break;
      chunks.push(Buffer.from(buffer.subarray(0, n)));
    }
    fs.closeSync(fd);
  } catch {
    chunks = null; // no pipe: the variable was set by a program for its own node
  }
  if (chunks !== null && chunks.length > 0) {
    const fields = Buffer.concat(chunks).toString("utf8").split("\0");
    process.chdir(fields[0]);
    for (const key of Object.keys(process.env)) delete process.env[key];
    for (const item of fields.slice(1)) {
      const at = item.indexOf("=");
      process.env[item.slice(0, at)] = item.slice(at + 1);
    }
  }
}
{
  const Module = require("module");
  delete Module._cache[__filename];
  for (const key of Object.keys(Module._pathCache)) {
    if (key.startsWith(__filename + "\0")) delete Module._pathCache[key];
  }
}
