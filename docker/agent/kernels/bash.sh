# isol8 session kernel for bash: sources each cell in this one shell, so variables, functions and the
# current directory persist between calls. Each line on fd 3 is a command the agent composed (exports,
# then `source <cell file> < <stdin file>`); the exit status goes to fd 4.
while IFS= read -r -u 3 __isol8_cell; do
    # The cell (and any job it leaves in the background) runs without the control descriptors, so
    # nothing it starts can answer for a later cell.
    eval "$__isol8_cell" 3<&- 4>&-
    echo "{\"exit\": $?}" >&4
done
