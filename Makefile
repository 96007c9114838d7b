# hoi-distill. Every target installs the project into .venv first when needed.
#
# Without variables, teacher-cache / train / eval / demo run on the bundled benchmark
# (minibench) with outputs under $(OUT) (runs/demo). On real data:
#   make teacher-cache IMAGES=... DETECTIONS=... [ANNOTATIONS=...] CACHE=runs/hico/test.zarr \
#        MODEL=ViT-B-16-quickgelu PRETRAINED=openai [LABELSPACE=hico_det]
#   make train TRAIN_CACHE=runs/hico/train.zarr OUT=runs/hico
#   make eval  TEST_CACHE=runs/hico/test.zarr OUT=runs/hico
PY         ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed
OUT        ?= runs/demo
LABELSPACE ?= hico_det
MODEL      ?= ViT-B-16-quickgelu
PRETRAINED ?= openai
CACHE      ?= $(OUT)/cache.zarr
export HF_HUB_OFFLINE := 1

.PHONY: install test bench demo teacher-cache train eval minibench-clip minibench-detector clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

demo: $(STAMP)
	$(BIN)/hoi demo --output $(OUT)

teacher-cache: $(STAMP)
ifdef IMAGES
	$(BIN)/hoi teacher-cache --images $(IMAGES) --detections $(DETECTIONS) \
	    $(if $(ANNOTATIONS),--annotations $(ANNOTATIONS)) --labelspace $(LABELSPACE) \
	    --teacher-model $(MODEL) $(if $(PRETRAINED),--pretrained $(PRETRAINED)) -o $(CACHE)
else
	$(BIN)/hoi demo --output $(OUT) --until teacher-cache
endif

train: $(STAMP)
ifdef TRAIN_CACHE
	$(BIN)/hoi train --cache $(TRAIN_CACHE) --output $(OUT)/train
else
	$(BIN)/hoi demo --output $(OUT) --until train
endif

eval: $(STAMP)
ifdef TEST_CACHE
	$(BIN)/hoi eval --cache $(TEST_CACHE) --checkpoint $(OUT)/train/checkpoint -o $(OUT)/eval/results.json
else
	$(BIN)/hoi demo --output $(OUT) --until eval
endif

# Rebuild the shipped minibench CLIP (renders the web corpus first).
minibench-clip: $(STAMP)
	$(BIN)/python -m minibench.build --out runs/minibench
	$(BIN)/python -m minibench.clip_train --out minibench/model --corpus runs/minibench/web/corpus.npz

# Rebuild the shipped minibench detector (tiny-fcos) from the world's train boxes, and print
# its test box AP@0.5 beside the simulated detector's.
minibench-detector: $(STAMP)
	$(BIN)/python -m minibench.build --out runs/minibench --no-web
	$(BIN)/python -m pipeline.tiny_fcos.train --world runs/minibench --out minibench/model/detector --epochs 30

clean:
	rm -rf $(VENV) build *.egg-info
