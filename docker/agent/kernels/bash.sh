# isol8 session kernel for bash: sources each cell in this one shell, so variables, functions and the
# current directory persist between calls. Each line on fd 3 is a command the agent composed (exports,
# then `source <cell file> < <stdin file>`); the exit status goes to fd 4.
while IFS= read -r -u 3 __isol8_cell; do
    eval "$__isol8_cell"
    echo "{\"exit\": $?}" >&4
done
