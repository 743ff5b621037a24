# The README's two commands. Both set everything up first (scripts/bootstrap.sh is idempotent).
.PHONY: setup demo demo-toy test lint bench

setup:
	bash scripts/bootstrap.sh

demo: setup
	.venv/bin/flatmtl demo service --out runs/service

demo-toy: setup
	.venv/bin/flatmtl demo toy --out runs/toy

test:
	bash scripts/test.sh

bench: setup
	.venv/bin/python benchmarks/mtl_core.py
