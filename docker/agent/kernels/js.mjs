// isol8 session kernel for node, bun and deno: runs cells as scripts in one global context, so
// top-level `let`, `const`, functions and globals persist between calls.
// Cells arrive on fd 3 as JSON lines {"code", "stdin", "env", "cwd"}; after each, {"exit": n} goes to fd 4.
// A cell's last value (unless undefined) goes to fd 4 first as {"display": bundle}: text/plain as the
// REPL shows it, plus application/json for plain data.
import fs from "node:fs";
import util from "node:util";
import readline from "node:readline";
import vm from "node:vm";
import * as moduleApi from "node:module";

globalThis.require = moduleApi.createRequire("/sandbox/");
// TypeScript: bun transpiles, node strips types; deno cells are plain JavaScript.
const transpiler = typeof Bun !== "undefined" ? new Bun.Transpiler({ loader: "ts" }) : null;
const stripTypes = typeof Deno === "undefined" ? moduleApi.stripTypeScriptTypes : undefined;

const flush = (stream) => new Promise((resolve) => stream.write("", resolve));

/** Plain data: primitives, arrays and plain objects that survive JSON unchanged in kind. */
function asJson(value) {
  const plain =
    value === null ||
    ["number", "string", "boolean"].includes(typeof value) ||
    Array.isArray(value) ||
    (typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype);
  if (!plain || (typeof value === "number" && !Number.isFinite(value))) return undefined;
  try {
    return JSON.parse(JSON.stringify(value));
  } catch {
    return undefined; // circular, or a BigInt inside
  }
}

async function publish(value) {
  const bundle = { "text/plain": util.inspect(value) };
  const json = asJson(value);
  if (json !== undefined) bundle["application/json"] = json;
  await flush(process.stdout);
  await flush(process.stderr);
  fs.writeSync(controlOut, JSON.stringify({ display: bundle }) + "\n");
}

const compile = (source) => new vm.Script(source, { filename: "cell.js" });

async function runCell(cell) {
  Object.assign(process.env, cell.env || {});
  if (cell.cwd) process.chdir(cell.cwd);
  let exitCode = 0;
  let wrapped = false;
  try {
    let source = transpiler ? transpiler.transformSync(cell.code) : cell.code;
    // Only compiling is retried: the cell itself runs once, whatever it throws.
    let script;
    try {
      script = compile(source);
    } catch (error) {
      if (!(error instanceof SyntaxError)) throw error;
      if (stripTypes && !transpiler) {
        try {
          source = stripTypes(source);
        } catch {
          throw error;
        }
      }
      // Top-level await needs an async function (whose declarations then stay local to the cell,
      // and whose value is not the cell's).
      wrapped = /\bawait\b/.test(source);
      script = compile(wrapped ? `(async () => {\n${source}\n})()` : source);
    }
    let value = script.runInThisContext();
    if (value && typeof value.then === "function") value = await value;
    if (!wrapped && value !== undefined) await publish(value);
  } catch (error) {
    process.stderr.write(`${error && error.stack ? error.stack : String(error)}\n`);
    exitCode = 1;
  }
  await flush(process.stdout);
  await flush(process.stderr);
  fs.writeSync(controlOut, JSON.stringify({ exit: exitCode }) + "\n");
}

// Opened by path: Deno's node compatibility cannot adopt inherited descriptors by number.
const controlOut = fs.openSync("/proc/self/fd/4", "w");
let queue = Promise.resolve();
const lines = readline.createInterface({ input: fs.createReadStream("/proc/self/fd/3") });
lines.on("line", (line) => {
  if (!line.trim()) return; // an ack for a result: this kernel's own never wait for one
  queue = queue.then(() => runCell(JSON.parse(line)));
});
