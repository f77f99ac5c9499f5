# isol8 pre-started bash: the loader of a shell the agent started before its run.
#
# bash sources BASH_ENV (this file, in the agent volume) before it opens the script of its command
# line, so with ISOL8_PRESTART_FD naming the handoff pipe the shell waits here for its run. Before
# that it drops the start environment (every exported variable but the ones bash derives at start,
# which the agent made sure are the run's own). The agent then writes the run as a script of its
# own making and closes the pipe: the run's variables as `export 'NAME=value'` lines (names checked,
# values single-quoted), the pipe closed and SECONDS restarted; `$_` is then left as a fresh start
# leaves it (the shell's argv[0], `bash` in isol8's runs). This file sets nothing else and forks
# only before the run exists; bash then runs the program file of its command line as `bash file.sh`
# always does (the agent wrote the program there before the handoff). A missing pipe (the variables
# set by a program for its own bash) changes nothing.
if [[ ${ISOL8_PRESTART_FD-} == 99 && -p /dev/fd/99 ]]; then
    for __isol8_name in $(compgen -e); do
        case $__isol8_name in SHLVL | PWD | OLDPWD) ;; *) unset "$__isol8_name" ;; esac
    done
    unset __isol8_name
    source /dev/fd/99
    : bash
fi
