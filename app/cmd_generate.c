/* cmd_generate.c - `gptoss generate`: answers for one or more users decoded
 * together, then the performance report (TTFT, decode speed, throughput, memory,
 * effective weight bandwidth). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cjson/cJSON.h>

#include "cli.h"
#include "gen_common.h"
#include "gpo_bench.h"

static void usage(void) {
    printf("usage: gptoss generate [-m DIR] [-p TEXT]... [--prompts FILE.json] [options]\n"
           "\n"
           "Answers every prompt; all users decode together in one batch per step.\n"
           "\n"
           "  -p, --prompt TEXT       a user prompt (repeatable)\n"
           "  --prompts FILE.json     prompts as [{\"prompt\": \"...\"}, ...]\n"
           "  --batch N               number of users; prompts are repeated to fill them\n"
           "  --warmup                run one untimed prefill and decode step first\n"
           "  --json FILE             write texts, tokens, finish reasons and metrics as JSON\n"
           "  --no-membw              skip the memory-bandwidth probe after the run\n"
           "%s",
           gen_opts_help);
}

static volatile sig_atomic_t g_abort;
static void on_sigint(int sig) {
    (void)sig;
    if (g_abort) _exit(130);
    g_abort = 1;
}

struct stream_state {
    int show_reasoning, raw;
    enum gpo_hchannel last;
};

/* Stream one user's output as it is generated. */
static void on_token(void *ud, size_t user, int32_t id, const struct gpo_hevent *ev) {
    struct stream_state *ss = ud;
    (void)user;
    (void)id;
    if (ss->raw || !ev->text_len) return;
    if (ev->channel == GPO_CH_ANALYSIS && !ss->show_reasoning) return;
    if (ev->channel != ss->last && ss->show_reasoning) {
        fputs(ev->channel == GPO_CH_ANALYSIS ? "[analysis] " : "\n[final] ", stdout);
        ss->last = ev->channel;
    }
    fwrite(ev->text, 1, ev->text_len, stdout);
    fflush(stdout);
}

static int load_prompts_file(const char *path, cJSON **root_out) {
    size_t len;
    char *txt = cli_read_file(path, &len);
    if (!txt) return 0;
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    if (!root || !cJSON_IsArray(root)) {
        cJSON_Delete(root);
        cli_error("%s: expected a JSON list like [{\"prompt\": \"...\"}, ...]", path);
        return 0;
    }
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "prompt");
        if (!cJSON_IsObject(e) || !cJSON_IsString(p)) {
            cJSON_Delete(root);
            cli_error("%s: entry %d is not an object with a string \"prompt\"", path, i);
            return 0;
        }
        i++;
    }
    *root_out = root;
    return 1;
}

int cmd_generate(int argc, char **argv) {
    struct gen_opts o;
    gen_opts_default(&o);
    const char *prompts_file = NULL, *json_path = NULL, *v;
    const char **prompts = calloc((size_t)argc + 1, sizeof *prompts);
    size_t n_prompts = 0;
    int64_t batch = 0;
    int warmup = 0, membw = 1;
    if (!prompts) return cli_error("out of memory");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = gen_opts_parse("generate", &o, argc, argv, &i);
        if (r < 0) {
            free(prompts);
            return CLI_EXIT_USAGE;
        }
        if (r > 0) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            free(prompts);
            return 0;
        } else if (!strcmp(a, "-p") || cli_is(a, "--prompt")) {
            if (!(v = cli_value("generate", argc, argv, &i))) goto usage_fail;
            prompts[n_prompts++] = v;
        } else if (cli_is(a, "--prompts")) {
            if (!(prompts_file = cli_value("generate", argc, argv, &i))) goto usage_fail;
        } else if (cli_is(a, "--json")) {
            if (!(json_path = cli_value("generate", argc, argv, &i))) goto usage_fail;
        } else if (cli_is(a, "--batch")) {
            if (!(v = cli_value("generate", argc, argv, &i))) goto usage_fail;
            if (!cli_parse_i64(v, 1, 4096, &batch)) {
                cli_usage_error("generate", "--batch needs a number from 1 to 4096, not '%s'", v);
                goto usage_fail;
            }
        } else if (!strcmp(a, "--warmup")) {
            warmup = 1;
        } else if (!strcmp(a, "--no-membw")) {
            membw = 0;
        } else {
            cli_usage_error("generate", "unknown option '%s'", a);
            goto usage_fail;
        }
    }

    int rc = CLI_EXIT_FAIL;
    enum gpo_status s;
    cJSON *pj = NULL;
    struct gen_env env = {0};
    gpo_engine *eng = NULL;
    struct gpo_gen_user *users = NULL;
    struct gpo_ids *prompt_ids = NULL;
    const char **user_prompt = NULL;
    size_t n_users = 0;
    char datebuf[11];

    if (prompts_file) {
        if (!load_prompts_file(prompts_file, &pj)) goto cleanup;
        const cJSON *e;
        prompts = realloc(prompts, ((size_t)argc + (size_t)cJSON_GetArraySize(pj) + 1) * sizeof *prompts);
        cJSON_ArrayForEach(e, pj) prompts[n_prompts++] = cJSON_GetObjectItemCaseSensitive(e, "prompt")->valuestring;
    }
    if (n_prompts == 0) {
        rc = cli_usage_error("generate", "give at least one prompt with -p TEXT or --prompts FILE.json");
        goto cleanup;
    }
    for (size_t i = 0; i < n_prompts; i++)
        if (!prompts[i][0]) {
            rc = cli_usage_error("generate", "prompt %zu is empty", i);
            goto cleanup;
        }
    n_users = batch > 0 ? (size_t)batch : n_prompts;
    if (gen_env_open(&env, &o) != 0) goto cleanup;
    fprintf(stderr, "gptoss: loaded %s (%s layout) in %.2f s\n", env.dir, gpo_model_layout(env.m),
            env.load_seconds);

    users = calloc(n_users, sizeof *users);
    prompt_ids = calloc(n_prompts, sizeof *prompt_ids);
    user_prompt = calloc(n_users, sizeof *user_prompt);
    if (!users || !prompt_ids || !user_prompt) {
        rc = cli_error("out of memory");
        goto cleanup;
    }
    const char *date = gen_date(&o, datebuf);
    for (size_t i = 0; i < n_prompts; i++) {
        struct gpo_conv conv;
        gpo_conv_init(&conv);
        struct gpo_chat_turn turn = {GPO_ROLE_USER, prompts[i]};
        if (!gpo_utf8_valid(prompts[i], strlen(prompts[i]))) {
            rc = cli_error("prompt %zu is not valid UTF-8", i);
            goto cleanup;
        }
        s = gpo_conv_build(&conv, o.developer, o.reasoning, date, &turn, 1);
        if (s == GPO_OK) s = gpo_harmony_render(env.tok, &conv, &prompt_ids[i]);
        gpo_conv_free(&conv);
        if (s != GPO_OK) {
            rc = cli_status(s, "cannot render prompt %zu", i);
            goto cleanup;
        }
    }
    for (size_t i = 0; i < n_users; i++) {
        struct gpo_gen_user *u = &users[i];
        size_t p = i % n_prompts;
        user_prompt[i] = prompts[p];
        u->prompt = prompt_ids[p].ids;
        u->n_prompt = prompt_ids[p].n;
        u->sampling = o.sp;
        u->sampling.seed = o.sp.seed + i;
        u->max_tokens = o.max_tokens;
        u->stops = o.stops;
        u->n_stops = o.n_stops;
        if ((int64_t)u->n_prompt >= o.eo.max_seq_len) {
            rc = cli_error("prompt of user %zu has %zu tokens, more than --max-seq-len %lld allows",
                           i, u->n_prompt, (long long)o.eo.max_seq_len);
            goto cleanup;
        }
    }
    if ((s = gpo_engine_create(env.m, env.tok, &o.eo, n_users, &eng)) != GPO_OK) {
        rc = cli_status(s, "cannot set up %zu users", n_users);
        goto cleanup;
    }
    signal(SIGINT, on_sigint);
    gpo_engine_set_abort(eng, &g_abort);
    if (warmup) {
        double tw = gpo_now();
        struct gpo_gen_user w = users[0];
        memset(&w.generated, 0, sizeof w - offsetof(struct gpo_gen_user, generated));
        w.max_tokens = 2;
        s = gpo_engine_run(eng, &w, 1, NULL, NULL, NULL);
        gpo_gen_user_free(&w);
        gpo_engine_reset_slot(eng, 0);
        if (s != GPO_OK) {
            rc = cli_status(s, "warm-up failed");
            goto cleanup;
        }
        fprintf(stderr, "gptoss: load %.2f s, warm-up %.2f s\n", env.load_seconds, gpo_now() - tw);
    }
    fprintf(stderr, "gptoss: %zu user%s, kernels %s, %d token%s per step at most\n", n_users,
            n_users == 1 ? "" : "s", gpo_engine_kernels(eng), (int)o.eo.ubatch, o.eo.ubatch == 1 ? "" : "s");

    struct stream_state ss = {.show_reasoning = o.show_reasoning, .raw = o.raw, .last = GPO_CH_NONE};
    struct gpo_gen_stats st;
    if (n_users == 1) printf("==USER 0 - PROMPT\n%s\n==USER 0 - OUTPUT\n", user_prompt[0]);
    fflush(stdout);
    s = gpo_engine_run(eng, users, n_users, n_users == 1 ? on_token : NULL, &ss, &st);
    if (s != GPO_OK) {
        rc = cli_status(s, "generation failed");
        goto cleanup;
    }
    for (size_t i = 0; i < n_users; i++) {
        struct gpo_gen_user *u = &users[i];
        if (n_users > 1) {
            printf("==USER %zu - PROMPT\n%s\n==USER %zu - OUTPUT\n", i, user_prompt[i], i);
            if (o.raw) {
                fwrite(u->raw_text.s, 1, u->raw_text.n, stdout);
            } else {
                if (o.show_reasoning && u->analysis_text.n) {
                    fputs("[analysis] ", stdout);
                    fwrite(u->analysis_text.s, 1, u->analysis_text.n, stdout);
                    fputs("\n[final] ", stdout);
                }
                if (u->final_text.n) fwrite(u->final_text.s, 1, u->final_text.n, stdout);
            }
        } else if (o.raw) {
            fwrite(u->raw_text.s, 1, u->raw_text.n, stdout);
        }
        printf("\n");
        fprintf(stderr, "gptoss: user %zu: %zu tokens, finish %s%s%s\n", i, u->generated.n,
                gpo_finish_name(u->finish), u->recovered ? " (output was not well-formed harmony)" : "",
                u->aborted ? " (aborted)" : "");
    }
    struct gpo_model_info inf;
    gpo_model_get_info(env.m, &inf);
    double kv_gib = (double)gpo_engine_kv_bytes(eng) / 1073741824.0;
    double gbs = st.decode_seconds > 0 ? (double)st.weight_bytes / st.decode_seconds / 1e9 : 0.0;
    /* Peak RSS is read before the bandwidth probe allocates its buffer. */
    uint64_t peak_rss = gen_peak_rss();
    double membw_gbs = -1.0;
    if (membw && gbs > 0 &&
        gpo_membw_measure(o.eo.n_threads, (uint64_t)512 << 20, 0.5, &membw_gbs) != GPO_OK)
        membw_gbs = -1.0;
    printf("=== Performance Metrics ===\n");
    printf("Average Time to First Token (TTFT): %.1fms\n", st.avg_ttft * 1000.0);
    printf("Average decode speed: %.1fms @ %.1f tok/s/user (%.1f tok/s throughput)\n", st.avg_decode_ms,
           st.tok_s_user, st.tok_s_total);
    printf("Data parallel: 1, Global batch size: %zu\n", n_users);
    /* Two decimals below 10 GiB, so small models and caches do not show as 0.0. */
    double wg = (double)inf.bytes_mapped / 1073741824.0,
           rg = (double)peak_rss / 1073741824.0;
    printf("Memory: weights %.*f GiB mapped, KV cache %.*f GiB, peak RSS %.*f GiB\n", wg < 10 ? 2 : 1,
           wg, kv_gib < 10 ? 2 : 1, kv_gib, rg < 10 ? 2 : 1, rg);
    if (membw_gbs > 0)
        printf("Utilisation: %.1f GB/s effective weight reads, %.0f%% of the %.1f GB/s measured read bandwidth\n",
               gbs, 100.0 * gbs / membw_gbs, membw_gbs);
    else
        printf("Utilisation: %.1f GB/s effective weight reads\n", gbs);

    if (json_path) {
        cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "users");
        for (size_t i = 0; i < n_users; i++) {
            struct gpo_gen_user *u = &users[i];
            cJSON *uo = cJSON_CreateObject();
            cJSON_AddNumberToObject(uo, "user", (double)i);
            cJSON_AddStringToObject(uo, "prompt", user_prompt[i]);
            cJSON_AddStringToObject(uo, "text", u->final_text.s ? u->final_text.s : "");
            cJSON_AddStringToObject(uo, "reasoning", u->analysis_text.s ? u->analysis_text.s : "");
            cJSON *toks = cJSON_AddArrayToObject(uo, "tokens");
            for (size_t j = 0; j < u->generated.n; j++)
                cJSON_AddItemToArray(toks, cJSON_CreateNumber(u->generated.ids[j]));
            cJSON_AddNumberToObject(uo, "prompt_tokens", (double)u->n_prompt);
            cJSON_AddStringToObject(uo, "finish_reason", gpo_finish_name(u->finish));
            cJSON_AddBoolToObject(uo, "recovered", u->recovered);
            cJSON_AddNumberToObject(uo, "ttft_ms", u->t_first * 1000.0);
            cJSON_AddItemToArray(arr, uo);
        }
        cJSON *mo = cJSON_AddObjectToObject(root, "metrics");
        cJSON_AddNumberToObject(mo, "avg_ttft_ms", st.avg_ttft * 1000.0);
        cJSON_AddNumberToObject(mo, "avg_decode_ms", st.avg_decode_ms);
        cJSON_AddNumberToObject(mo, "tok_s_user", st.tok_s_user);
        cJSON_AddNumberToObject(mo, "tok_s_total", st.tok_s_total);
        cJSON_AddNumberToObject(mo, "users", (double)n_users);
        cJSON_AddNumberToObject(mo, "prefill_tokens", (double)st.n_prefill);
        cJSON_AddNumberToObject(mo, "generated_tokens", (double)st.n_generated);
        cJSON_AddNumberToObject(mo, "effective_gbs", gbs);
        cJSON_AddNumberToObject(mo, "weights_mapped_bytes", (double)inf.bytes_mapped);
        cJSON_AddNumberToObject(mo, "peak_rss_bytes", (double)peak_rss);
        if (membw_gbs > 0) {
            cJSON_AddNumberToObject(mo, "membw_gbs", membw_gbs);
            cJSON_AddNumberToObject(mo, "bw_fraction", gbs / membw_gbs);
        }
        cJSON_AddNumberToObject(mo, "load_seconds", env.load_seconds);
        cJSON_AddStringToObject(mo, "kernels", gpo_engine_kernels(eng));
        char *out = cJSON_Print(root);
        FILE *f = fopen(json_path, "w");
        int ok = f && out && fputs(out, f) >= 0;
        if (f && fclose(f) != 0) ok = 0;
        free(out);
        cJSON_Delete(root);
        if (!ok) {
            rc = cli_error("cannot write %s", json_path);
            goto cleanup;
        }
    }
    rc = 0;

cleanup:
    for (size_t i = 0; users && i < n_users; i++) gpo_gen_user_free(&users[i]);
    for (size_t i = 0; prompt_ids && i < n_prompts; i++) gpo_ids_free(&prompt_ids[i]);
    free(users);
    free(prompt_ids);
    free(user_prompt);
    gpo_engine_free(eng);
    gen_env_close(&env);
    cJSON_Delete(pj);
    free(prompts);
    return rc;

usage_fail:
    free(prompts);
    return CLI_EXIT_USAGE;
}
