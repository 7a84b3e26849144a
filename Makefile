# The two commands of the README. Everything else is `iclora --help`.
# The venv: $(ICLORA_VENV) when set (as scripts/ read it), else the per-user cache.
VENV ?= $(or $(ICLORA_VENV),$(HOME)/.cache/masked-iclora/venv)
export ICLORA_VENV := $(VENV)

.PHONY: demo test lint crd lock

demo:
	@scripts/setup-env.sh
	@scripts/demo.sh $(ARGS)

test:
	@scripts/setup-env.sh
	@scripts/test.sh

lint:
	@$(VENV)/bin/ruff check .

lock:
	@{ sed -n '1,2p' constraints.txt; $(VENV)/bin/pip freeze --exclude-editable; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt

crd:
	@$(VENV)/bin/iclora crd --write crds
	@$(VENV)/bin/iclora crd --write charts/masked-iclora/crds
