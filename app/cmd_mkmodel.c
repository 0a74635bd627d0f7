/* cmd_mkmodel.c - `gptoss mkmodel`: write a random-weight checkpoint with the real
 * tensor names, dtypes and shapes of a GPT-OSS model (tiny, 20b or 120b), in the
 * HF layout, the original/ layout or both, or as one GGUF file (--format gguf,
 * streamed without a safetensors copy).  Progress goes to stderr. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "convert.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: gptoss mkmodel --preset tiny|20b|120b --out DIR [options]\n"
            "       gptoss mkmodel --preset NAME --format gguf [--dense bf16|q8] --out FILE.gguf\n"
            "\n"
            "Write a checkpoint with random weights and exactly the tensor names, dtypes and\n"
            "shapes of the released model (BF16 everywhere except the MXFP4 experts), plus\n"
            "config.json (HF layout) or original/config.json and original/dtypes.json.\n"
            "\n"
            "  --preset NAME     tiny (4 layers, hidden 64, 8 experts, real vocabulary),\n"
            "                    20b (about 13.8 GB) or 120b (about 65 GB)\n"
            "  --out DIR, -o DIR the folder to write (created if missing)\n"
            "  --seed N          random seed (default 1); the output is a pure function of it\n"
            "  --layout L        hf (default), original, or both\n"
            "  --format F        safetensors (default) or gguf: one GGUF file as llama.cpp's\n"
            "                    converter writes it (F32 norms, biases, sinks and router,\n"
            "                    MXFP4 experts, the tokenizer in the metadata)\n"
            "  --dense TYPE      gguf: bf16 (default) or q8 for the embedding, unembedding\n"
            "                    and attention matrices\n"
            "  --tokenizer FILE  gguf: tokenizer.json to embed (default: the pinned copy)\n"
            "  --force           write into DIR even if it is not empty (old checkpoint\n"
            "                    files of the written layouts are replaced); gguf: replace FILE\n"
            "  --quiet, -q       no progress messages\n"
            "  --help, -h        this help\n"
            "\n"
            "The HF layout of large presets is sharded like the release (model-0000K-of-0000N\n"
            "files of at most 5 GB and model.safetensors.index.json).\n");
}

/* 1 if dir exists and holds anything, 0 if it is missing or empty, -1 if it is
 * not a folder or cannot be read. */
static int dir_nonempty(const char *dir) {
    struct stat sb;
    if (stat(dir, &sb) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(sb.st_mode)) return -1;
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *de;
    int found = 0;
    while (!found && (de = readdir(d)) != NULL)
        found = strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
    closedir(d);
    return found;
}

int cmd_mkmodel(int argc, char **argv) {
    const char *cmd = "mkmodel";
    struct gpo_mkmodel_opts o = {0};
    const char *layout = NULL, *format = "safetensors", *dense = NULL, *tok = NULL;
    int force = 0, quiet = 0;
    o.seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (cli_is(a, "--preset")) {
            if (!(o.preset = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (cli_is(a, "--out") || !strcmp(a, "-o")) {
            if (!(o.out_dir = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (cli_is(a, "--seed")) {
            const char *v = cli_value(cmd, argc, argv, &i);
            int64_t seed;
            if (!v) return CLI_EXIT_USAGE;
            if (!cli_parse_i64(v, 0, INT64_MAX, &seed))
                return cli_usage_error(cmd, "--seed needs a non-negative integer, not '%s'", v);
            o.seed = (uint64_t)seed;
        } else if (cli_is(a, "--layout")) {
            if (!(layout = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (cli_is(a, "--format")) {
            if (!(format = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (cli_is(a, "--dense")) {
            if (!(dense = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (cli_is(a, "--tokenizer")) {
            if (!(tok = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (!strcmp(a, "--force")) {
            force = 1;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            quiet = 1;
        } else {
            return cli_usage_error(cmd, "unknown option '%s'", a);
        }
    }
    if (!o.preset) return cli_usage_error(cmd, "--preset is required (tiny, 20b or 120b)");
    if (strcmp(o.preset, "tiny") && strcmp(o.preset, "20b") && strcmp(o.preset, "120b"))
        return cli_usage_error(cmd, "unknown preset '%s' (choose tiny, 20b or 120b)", o.preset);
    if (!strcmp(format, "gguf")) {
        if (!o.out_dir || !o.out_dir[0]) return cli_usage_error(cmd, "--out FILE is required");
        if (layout) return cli_usage_error(cmd, "--layout is for --format safetensors");
        struct gpo_mkmodel_gguf_opts g = {.preset = o.preset, .path = o.out_dir, .seed = o.seed,
                                          .dense = GPO_DENSE_BF16, .tokenizer_path = tok,
                                          .force = force};
        if (dense && (!gpo_dense_parse(dense, &g.dense) || g.dense == GPO_DENSE_STORED))
            return cli_usage_error(cmd, "--dense takes bf16 or q8, not '%s'", dense);
        if (quiet) gpo_set_log_level(GPO_LOG_WARN);
        enum gpo_status s = gpo_mkmodel_gguf(&g);
        if (s != GPO_OK) return cli_status(s, "mkmodel %s into %s failed", o.preset, o.out_dir);
        return 0;
    }
    if (strcmp(format, "safetensors"))
        return cli_usage_error(cmd, "unknown format '%s' (choose safetensors or gguf)", format);
    if (dense || tok) return cli_usage_error(cmd, "--dense and --tokenizer are for --format gguf");
    if (!layout) layout = "hf";
    if (!o.out_dir || !o.out_dir[0]) return cli_usage_error(cmd, "--out DIR is required");
    if (!strcmp(layout, "hf")) {
        o.layout_hf = 1;
    } else if (!strcmp(layout, "original")) {
        o.layout_original = 1;
    } else if (!strcmp(layout, "both")) {
        o.layout_hf = o.layout_original = 1;
    } else {
        return cli_usage_error(cmd, "unknown layout '%s' (choose hf, original or both)", layout);
    }

    int ne = dir_nonempty(o.out_dir);
    if (ne < 0) return cli_error("%s exists but is not a readable folder", o.out_dir);
    if (ne > 0 && !force)
        return cli_error("%s is not empty; use --force to write into it anyway", o.out_dir);

    if (quiet) gpo_set_log_level(GPO_LOG_WARN);
    enum gpo_status s = gpo_mkmodel(&o);
    if (s != GPO_OK) return cli_status(s, "mkmodel %s into %s failed", o.preset, o.out_dir);
    return 0;
}
