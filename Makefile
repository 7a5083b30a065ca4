# Thin driver over CMake. `make run` and `make check` install what is missing
# (scripts/install-deps), configure, build and run; everything else is CMake.
BUILD ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE ?= cmake
CTEST ?= ctest

.PHONY: all deps configure build run check asan tsan bench format lint install clean

all: build

deps:
	@scripts/install-deps

configure: deps
	@$(CMAKE) -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) >/dev/null

build: configure
	@$(CMAKE) --build $(BUILD) -j $(JOBS)

# The main job: TeraSort of RUN_SIZE bytes on a local cluster of executors,
# its output checked by the job itself (valsort-equivalent, checksum against
# the generated input) and again by `spate valsort`, then removed.
RUN_SIZE ?= 1g
RUN_OUT ?= /tmp/spate-run-terasort
run: build
	@rm -rf $(RUN_OUT)
	FI_TCP_IFACE=lo ./$(BUILD)/spate run terasort --size $(RUN_SIZE) --output $(RUN_OUT) --progress
	./$(BUILD)/spate valsort $(RUN_OUT)
	@rm -rf $(RUN_OUT)

check: build
	$(CTEST) --test-dir $(BUILD) --output-on-failure -j $(JOBS)

asan:
	@scripts/install-deps
	$(CMAKE) -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSPATE_SANITIZE=address,undefined >/dev/null
	$(CMAKE) --build build-asan -j $(JOBS)
	$(CTEST) --test-dir build-asan --output-on-failure -j $(JOBS) -L unit

tsan:
	@scripts/install-deps
	$(CMAKE) -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DSPATE_SANITIZE=thread >/dev/null
	$(CMAKE) --build build-tsan -j $(JOBS)
	$(CTEST) --test-dir build-tsan --output-on-failure -j $(JOBS) -L unit

bench: configure
	$(CMAKE) --build $(BUILD) -j $(JOBS) --target bench

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cc')

lint: configure
	clang-tidy -p $(BUILD) --quiet $$(git ls-files '*.c')

install: build
	$(CMAKE) --install $(BUILD)

clean:
	rm -rf $(BUILD) build-asan build-tsan
