# The README's two commands. Both set everything up first (scripts/bootstrap.sh is idempotent).
.PHONY: setup demo demo-toy test test-fast bench

setup:
	bash scripts/bootstrap.sh

demo: setup
	.venv/bin/flatmtl demo service --out runs/service

demo-toy: setup
	.venv/bin/flatmtl demo toy --out runs/toy

test:
	bash scripts/test.sh

# The edit-test loop: everything but the tests marked slow (real processes, Ray, training runs, clean installs).
test-fast:
	bash scripts/test.sh -m "not slow"

bench: setup
	.venv/bin/python benchmarks/mtl_core.py
