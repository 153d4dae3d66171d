#!/usr/bin/env bash
# Print the interpreter to build .venv with: Python 3.12 where installed (PATH or pyenv),
# else 3.11. Exit 1 with a message when neither is there.
#   scripts/find_python.sh 3.11   only that version (make test-py311)
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == tuple(map(int, "'"$2"'".split("."))) else 1)' 2>/dev/null; }
for want in ${1:-3.12 3.11}; do
  for cand in "python$want" "$(command -v pyenv >/dev/null 2>&1 && ls -d "$(pyenv root)/versions/$want".*/bin/python 2>/dev/null | sort -V | tail -n 1)" \
              "$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$want".*/bin/python 2>/dev/null | sort -V | tail -n 1)" python3; do
    [[ -n "$cand" ]] || continue
    path=$(command -v "$cand" 2>/dev/null) || continue
    # pyenv shims may point at a version that is not installed: ask the interpreter itself
    if ok "$path" "$want"; then echo "$path"; exit 0; fi
  done
done
echo "no Python ${1:-3.12 or 3.11} found: install one (e.g. 'pyenv install 3.12' or 'apt install python3.12-venv')" >&2
exit 1
