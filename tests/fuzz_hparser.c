/* fuzz_hparser.c - libFuzzer target for the streaming harmony parser
 * (`gpo_hparser_*`) fed arbitrary token ids with the real tokenizer (`make fuzz`).
 * The input is little-endian int32 ids; non-negative ones beyond the vocabulary
 * are folded into 0 .. n_tokens + 63 (so reserved ids still occur), negative ones
 * are kept (the parser must refuse them).  Malformed output must never fail:
 * every event names an existing message, every text is valid UTF-8, and the
 * messages of the turn go into a conversation that renders again. */
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "util.h"

static const gpo_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    tok = fuzz_tokenizer();
    return 0;
}

static void check_event(const gpo_hparser *p, const struct gpo_hevent *ev) {
    FUZZ_CHECK(ev->msg >= -1 && (ev->msg < 0 || (size_t)ev->msg < gpo_hparser_n_messages(p)));
    FUZZ_CHECK(ev->text != NULL && gpo_utf8_valid(ev->text, ev->text_len));
    FUZZ_CHECK(ev->text_len == 0 || ev->msg >= 0);
}

static void check_messages(const gpo_hparser *p) {
    for (size_t i = 0; i < gpo_hparser_n_messages(p); i++) {
        const struct gpo_hparsed *m = gpo_hparser_message(p, i);
        FUZZ_CHECK(m != NULL && m->msg.content != NULL);
        FUZZ_CHECK(gpo_utf8_valid(m->msg.content, m->content_len));
        FUZZ_CHECK(m->msg.content[m->content_len] == 0);
        FUZZ_CHECK(m->channel == gpo_hchannel_of(m->msg.channel));
        FUZZ_CHECK(m->msg.role != GPO_ROLE_TOOL || (m->msg.name && m->msg.name[0]));
        FUZZ_CHECK(!m->recovered || gpo_hparser_recovered(p));
        if (i + 1 < gpo_hparser_n_messages(p)) FUZZ_CHECK(m->complete);
    }
    FUZZ_CHECK(gpo_hparser_message(p, gpo_hparser_n_messages(p)) == NULL);
}

static void feed(gpo_hparser *p, const uint8_t *data, size_t size) {
    int32_t nt = gpo_tokenizer_n_tokens(tok);
    for (size_t i = 0; i + 4 <= size; i += 4) {
        int32_t id;
        memcpy(&id, data + i, 4);
        if (id > nt + 63) id %= nt + 64;
        struct gpo_hevent ev;
        int was_done = gpo_hparser_done(p);
        size_t n_before = gpo_hparser_n_messages(p);
        enum gpo_status s = gpo_hparser_push(p, id, &ev);
        if (id < 0) {
            FUZZ_CHECK(s == GPO_ERR_TOKEN && gpo_hparser_n_messages(p) == n_before);
        } else {
            FUZZ_CHECK(s == GPO_OK);
        }
        check_event(p, &ev);
        if (was_done) FUZZ_CHECK(ev.msg == -1 && ev.text_len == 0 && !ev.turn_done);
        if (ev.turn_done) FUZZ_CHECK(gpo_hparser_done(p) && gpo_is_stop_token(id));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gpo_hparser *p = NULL;
    FUZZ_CHECK(gpo_hparser_create(tok, &p) == GPO_OK);
    feed(p, data, size);
    check_messages(p);
    struct gpo_hevent ev;
    FUZZ_CHECK(gpo_hparser_finish(p, &ev) == GPO_OK);
    check_event(p, &ev);
    check_messages(p);
    for (size_t i = 0; i < gpo_hparser_n_messages(p); i++)
        FUZZ_CHECK(gpo_hparser_message(p, i)->complete);

    /* The turn's messages, as a chat loop keeps them, render as prompt ids. */
    struct gpo_conv c;
    gpo_conv_init(&c);
    FUZZ_CHECK(gpo_hparser_to_conv(p, &c, size & 1) == GPO_OK);
    struct gpo_ids ids = {0};
    FUZZ_CHECK(gpo_harmony_render(tok, &c, &ids) == GPO_OK);
    gpo_ids_free(&ids);
    gpo_conv_free(&c);

    /* A reset parser takes a new turn as if fresh. */
    gpo_hparser_reset(p);
    FUZZ_CHECK(gpo_hparser_n_messages(p) == 0 && !gpo_hparser_done(p));
    FUZZ_CHECK(gpo_hparser_end_token(p) == -1 && !gpo_hparser_recovered(p));
    feed(p, data, size < 64 ? size : 64);
    check_messages(p);
    gpo_hparser_free(p);
    return 0;
}
