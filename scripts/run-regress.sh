#!/usr/bin/env bash
# The recipe of `make regress`: run the regress command given as arguments and pass its
# exit status on. make reports any failed recipe as 2 ("Error 1" in its own line), so when
# regress fails this says in one line which way it failed: 1 a regression, 2 an error.
# CI gates that must tell 1 from 2 call `.venv/bin/regress compare ...` directly.
set -u
"$@"
status=$?
case $status in
  0) exit 0 ;;
  1) what="regression found; 2 is an error" ;;
  2) what="an error, see its message above; 1 is a regression" ;;
  *) what="stopped before it could give a verdict" ;;
esac
echo "make regress: regress exited $status ($what)" >&2
exit $status
