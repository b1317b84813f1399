# lumi_jax Make targets. Every target bootstraps its own environment: when .venv is missing, or
# pyproject.toml is newer than the install stamp, it creates the venv and installs -e .[dev].
# So on a fresh clone `make test` alone installs and tests.

PYTHON_SYSTEM ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
# The tests also load exports in transformers (tests/test_interop.py): the `interop` extra (a CPU
# torch wheel and transformers) is installed for `make test` only, never for the sessions.
TEST_STAMP := $(VENV)/.install-test-stamp
CONFIG ?= config/architectures/tiny.json

.DEFAULT_GOAL := help

$(STAMP): pyproject.toml
	@$(PYTHON_SYSTEM) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lumi_jax needs Python >= 3.11; set PYTHON_SYSTEM=python3.11 (or newer)")'
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

.PHONY: help install test lint validate-architecture clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-24s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install lumi_jax with its dev tools

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,interop]'
	@touch $(TEST_STAMP)

test: $(TEST_STAMP) ## run the test suite
	$(PY) -m pytest

lint: $(STAMP) ## ruff over the package, tests and benchmarks
	$(VENV)/bin/ruff check lumi_jax tests benchmarks

validate-architecture: $(STAMP) ## counts, memory and LLaMA checks for CONFIG (default tiny)
	$(PY) -m lumi_jax.cli architecture $(CONFIG)

# Data: `make prepare SOURCE=sample OUT=data/sample`. SOURCE is sample, a .txt/.md file, a
# directory, a glob, a .jsonl file or tfds:NAME[:SPLIT]; VOCAB, SIZE_MB, SEED and FORCE=1 are optional.
SOURCE ?= sample
OUT ?= data/sample

.PHONY: prepare
prepare: $(STAMP) ## tokenise SOURCE (default sample) into OUT (default data/sample); VOCAB, SIZE_MB, SEED, FORCE=1
	$(PY) -m lumi_jax.cli prepare --source '$(SOURCE)' --out '$(OUT)' $(if $(VOCAB),--vocab-size '$(VOCAB)') $(if $(SIZE_MB),--size-mb '$(SIZE_MB)') $(if $(SEED),--seed '$(SEED)') $(if $(FORCE),--force)

# Training: `make train MODEL=tiny DATA=data/sample RUN=runs/tiny`. RECIPE (quick, prototype,
# experiment or a JSON path), STEPS, BUDGET (minutes) and RESUME=1 are optional; an existing RUN continues.
TRAIN_MODEL = $(or $(MODEL),tiny)

.PHONY: train
train: $(STAMP) ## train MODEL (tiny) on DATA (data/sample) into RUN (runs/MODEL); RECIPE, STEPS, BUDGET, RESUME=1
	$(PY) -m lumi_jax.cli train --model '$(TRAIN_MODEL)' --data '$(or $(DATA),data/sample)' --out '$(or $(RUN),runs/$(TRAIN_MODEL))' $(if $(RECIPE),--recipe '$(RECIPE)') $(if $(STEPS),--steps '$(STEPS)') $(if $(BUDGET),--time-budget '$(BUDGET)') $(if $(RESUME),--resume)

# Fine-tuning: `make sft FROM=runs/tiny RUN=runs/tiny-sft`. Without DATA, the sample instructions
# are prepared first with FROM's tokenizer (into data/instructions-FROMNAME); STEPS, BUDGET
# (minutes) and LORA_RANK are optional.
SFT_FROM = $(or $(FROM),runs/tiny)
SFT_DATA = $(or $(DATA),data/instructions-$(notdir $(SFT_FROM)))

.PHONY: sft
sft: $(STAMP) ## fine-tune FROM (runs/tiny) on DATA (sample instructions) into RUN (FROM-sft); STEPS, BUDGET, LORA_RANK
	test -d '$(SFT_DATA)' || $(PY) -m lumi_jax.cli prepare --source sample-instructions --out '$(SFT_DATA)' --tokenizer '$(SFT_FROM)/tokenizer.model'
	$(PY) -m lumi_jax.cli sft --from '$(SFT_FROM)' --data '$(SFT_DATA)' --out '$(or $(RUN),$(SFT_FROM)-sft)' $(if $(STEPS),--steps '$(STEPS)') $(if $(BUDGET),--time-budget '$(BUDGET)') $(if $(LORA_RANK),--lora-rank '$(LORA_RANK)')

# Generation and evaluation: MODEL_PATH picks the run (default: the latest under runs/), e.g.
# `MODEL_PATH=runs/tiny make evaluate-quick`, `make generate PROMPT="Once upon a time"`.
RUN_ARG = $(if $(MODEL_PATH),--run '$(MODEL_PATH)')

.PHONY: generate evaluate evaluate-quick assess-performance
generate: $(STAMP) ## continue PROMPT (or PROMPTS=file, or CHAT=1) with MODEL_PATH; TOKENS, TEMPERATURE, GREEDY=1
	$(PY) -m lumi_jax.cli generate $(RUN_ARG) $(if $(PROMPTS),--prompts '$(PROMPTS)',$(if $(CHAT),--chat,--prompt '$(or $(PROMPT),Once upon a time)')) $(if $(TOKENS),--max-new-tokens '$(TOKENS)') $(if $(TEMPERATURE),--temperature '$(TEMPERATURE)') $(if $(GREEDY),--greedy)

evaluate: $(STAMP) ## loss, perplexity, bits per byte, baselines, samples over the whole validation split of MODEL_PATH
	$(PY) -m lumi_jax.cli evaluate $(RUN_ARG) $(if $(DATA),--data '$(DATA)')

evaluate-quick: $(STAMP) ## the same on a fixed validation subset, with shorter samples (seconds on a CPU)
	$(PY) -m lumi_jax.cli evaluate $(RUN_ARG) $(if $(DATA),--data '$(DATA)') --quick

assess-performance: $(STAMP) ## findings with recommendations and a grade for MODEL_PATH; RUNS="a b" compares runs
	$(PY) -m lumi_jax.cli assess $(if $(RUNS),--compare $(RUNS),$(RUN_ARG))

# find hands each path to rm as one argument (-exec ... {} +): a space, quote or newline in a
# path never splits it into others (`runs/old notes/__pycache__` is never `runs/old`).
# Export: `make export MODEL_PATH=runs/tiny` writes a transformers directory (exports/tiny-hf);
# FORMAT=llama2c writes run.c's exports/tiny.bin and exports/tokenizer.bin. EXPORT_OUT and
# DTYPE=bfloat16 (hf only) are optional. (`OUT` belongs to prepare.)
EXPORT_FORMAT = $(or $(FORMAT),hf)
EXPORT_NAME = $(notdir $(patsubst %/,%,$(MODEL_PATH)))

.PHONY: export
export: $(STAMP) ## export MODEL_PATH as FORMAT (hf or llama2c) into EXPORT_OUT (exports/NAME-hf or exports/NAME.bin); DTYPE
	@test -n '$(MODEL_PATH)' || { echo "error: name the run: make export MODEL_PATH=runs/NAME [FORMAT=hf|llama2c]" >&2; exit 2; }
	$(PY) -m lumi_jax.cli export --run '$(MODEL_PATH)' --format '$(EXPORT_FORMAT)' --out '$(or $(EXPORT_OUT),exports/$(EXPORT_NAME)$(if $(filter llama2c,$(EXPORT_FORMAT)),.bin,-hf))' $(if $(DTYPE),--dtype '$(DTYPE)')

clean: ## remove caches and temporary files (never data, runs, checkpoints or session logs)
	find . -path ./$(VENV) -prune -o -type d \( -name __pycache__ -o -name .pytest_cache -o -name .ruff_cache \) -prune -exec rm -rf -- {} +
	rm -rf -- build dist *.egg-info .tmp

# ---------------------------------------------------------------------------------------------
# Sessions (python -m lumi_jax.session NAME). SESSION_TIME (minutes), CONFIG, MODEL_PATH and DATA
# become flags; CONFIG reaches a session only when you set it (its default above is for
# validate-architecture). Each session takes only the settings that apply to it.
SESSION := $(PY) -m lumi_jax.session
SESSION_TIME_ARG = $(if $(SESSION_TIME),--time '$(SESSION_TIME)')
SESSION_CONFIG_ARG = $(if $(filter-out file default,$(origin CONFIG)),--config '$(CONFIG)')
SESSION_DATA_ARG = $(if $(DATA),--data '$(DATA)')
SESSION_RUN_ARG = $(if $(MODEL_PATH),--run '$(MODEL_PATH)')

.PHONY: session-quick session-prototype session-experiment session-evaluation session-architecture session-status session-debug monitor check-env session-cleanup backup

session-quick: $(STAMP) ## the whole pipeline end to end on a micro model (30 min budget; < 5 min on 2 CPU cores)
	$(SESSION) quick $(SESSION_TIME_ARG) $(SESSION_CONFIG_ARG) $(SESSION_DATA_ARG) $(if $(PROCESSES),--processes '$(PROCESSES)')

session-prototype: $(STAMP) ## the ~6M tiny model for 1000 steps, evaluated, with curves and samples (2 h budget)
	$(SESSION) prototype $(SESSION_TIME_ARG) $(SESSION_CONFIG_ARG) $(SESSION_DATA_ARG)

session-experiment: $(STAMP) ## the ~42M small model: pretraining, instruction fine-tuning, evaluation (4 h budget)
	$(SESSION) experiment $(SESSION_TIME_ARG) $(SESSION_CONFIG_ARG) $(SESSION_DATA_ARG)

session-evaluation: $(STAMP) ## the latest run (or MODEL_PATH): full evaluation, assessment, comparison (1 h budget)
	$(SESSION) evaluation $(SESSION_TIME_ARG) $(SESSION_RUN_ARG)

session-architecture: $(STAMP) ## validate every config, memory vs this device, references (30 min budget)
	$(SESSION) architecture $(SESSION_TIME_ARG) $(SESSION_CONFIG_ARG)

session-status: $(STAMP) ## datasets, runs, the latest session, disk, device, and what to run next
	$(SESSION) status

session-debug: $(STAMP) ## interactive menu: diagnostics, smoke test, monitor, disk, cleanup, last errors
	$(SESSION) debug

monitor: $(STAMP) ## live CPU, memory, disk, accelerator and lumi processes (Ctrl-C to stop)
	$(SESSION) monitor

check-env: $(STAMP) ## Python, packages, devices, memory, disk, permissions (exit 1 if something is missing)
	$(SESSION) check-env

session-cleanup: $(STAMP) ## remove temporary files and session logs older than DAYS (7); DRY_RUN=1 lists only
	$(SESSION) cleanup $(if $(DAYS),--days '$(DAYS)') $(if $(DRY_RUN),--dry-run)

backup: $(STAMP) ## verified tar.gz of configs, tokenizers, latest checkpoints, reports (RUNS="a b" to choose)
	$(SESSION) backup $(if $(RUNS),--runs $(RUNS))
