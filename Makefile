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

# The main job. Until the runtime exists it shows what an executor would use.
run: build
	./$(BUILD)/spate topology

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
