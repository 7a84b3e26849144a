# The two commands of the README. Everything else is `iclora --help`.
VENV ?= $(HOME)/.cache/masked-iclora/venv
export ICLORA_VENV := $(VENV)

.PHONY: demo test lint crd

demo:
	@scripts/setup-env.sh
	@scripts/demo.sh $(ARGS)

test:
	@scripts/setup-env.sh
	@scripts/test.sh

lint:
	@$(VENV)/bin/ruff check .

crd:
	@$(VENV)/bin/iclora crd --write crds
	@$(VENV)/bin/iclora crd --write charts/masked-iclora/crds
