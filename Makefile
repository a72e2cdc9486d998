ROWS ?= 10000000
ROUNDS ?= 3

.PHONY: setup dev test bench
setup:
	bash scripts/setup.sh
dev:
	bash scripts/dev.sh
test:
	bash scripts/test.sh
bench:
	bash scripts/bench.sh --rows $(ROWS) --rounds $(ROUNDS)
