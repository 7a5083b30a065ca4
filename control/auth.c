/*
 * The control plane's mutual handshake (TCP, and optional on socketpairs)
 * and its secrets. The pieces here are each one step of a side; sock.c runs
 * them in order for sp__ctl_accept, sp__ctl_connect and sp__ctl_pair, and
 * the hub (hub.c) runs the server's as a state machine inside hub_wait, so
 * a client that stalls in the handshake does not hold the driver up.
 *
 * Handshake, all as frames:
 *   server: HELLO {Ns}            Ns, Nc: 32 random bytes each (RAND_bytes)
 *   client: AUTH {Nc, HMAC(secret, "spate-ctl-v1 client" || Ns || Nc)}
 *   server: WELCOME {HMAC(secret, "spate-ctl-v1 server" || Nc || Ns)}
 *        or REFUSED {str reason}, then closes.
 * Both MACs are compared with CRYPTO_memcmp; the labels keep a server from
 * replaying a client's MAC as its own and the fresh nonces keep either side
 * from replaying an old exchange. The secret never travels. Each step sets
 * the conn's receive gate (sock.c) so that nothing but the frame it expects
 * next, of a fixed or small size, is read before the peer proved the secret.
 *
 * A secret is the text of an environment variable byte for byte, or 32
 * random bytes as 64 hex digits (sp__ctl_secret_generate) for a launcher to
 * hand its executors.
 */
#include "control/control_int.h"

#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char sp_ctl_client_label[] = "spate-ctl-v1 client";
static const char sp_ctl_server_label[] = "spate-ctl-v1 server";

static const char *sp_ctl_ssl_error(char *buf, size_t cap)
{
    unsigned long e = ERR_get_error();

    if (e == 0)
        snprintf(buf, cap, "no OpenSSL error queued");
    else
        ERR_error_string_n(e, buf, cap);
    return buf;
}

static sp_status_t sp_ctl_random(unsigned char *buf, size_t len)
{
    char msg[256];

    if (RAND_bytes(buf, (int)len) != 1)
        return SP_RAISE(SP_ERR_INTERNAL, "RAND_bytes(%zu) failed: %s", len,
                        sp_ctl_ssl_error(msg, sizeof(msg)));
    return SP_OK;
}

/* HMAC-SHA256(secret, label || n1 || n2). */
static sp_status_t sp_ctl_mac(const void *secret, size_t slen, const char *label,
                              const unsigned char *n1, const unsigned char *n2, unsigned char *mac)
{
    unsigned char msg[32 + 2 * SP__CTL_NONCE_SIZE];
    size_t ll = strlen(label);
    unsigned int mlen = 0;
    char err[256];

    SP_ASSERT(ll <= 32);
    memcpy(msg, label, ll);
    memcpy(msg + ll, n1, SP__CTL_NONCE_SIZE);
    memcpy(msg + ll + SP__CTL_NONCE_SIZE, n2, SP__CTL_NONCE_SIZE);
    if (HMAC(EVP_sha256(), secret, (int)slen, msg, ll + 2 * SP__CTL_NONCE_SIZE, mac, &mlen) ==
            NULL ||
        mlen != SP__CTL_MAC_SIZE)
        return SP_RAISE(SP_ERR_INTERNAL, "HMAC-SHA256 failed: %s",
                        sp_ctl_ssl_error(err, sizeof(err)));
    return SP_OK;
}

sp_status_t sp__ctl_check_secret(const void *secret, size_t slen)
{
    if (secret == NULL || slen == 0 || slen > INT_MAX)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "control connection: the secret must be 1 to %d bytes (got %zu%s)", INT_MAX,
                        slen, secret == NULL ? " at NULL" : "");
    return SP_OK;
}

/*
 * Server: a fresh nonce, sent as HELLO; from now on the conn reads nothing
 * but the fixed-size AUTH frame until the client has proved the secret.
 */
sp_status_t sp__ctl_hs_hello(sp__ctl_sock_t *s)
{
    sp_status_t st = sp_ctl_random(s->nonce, sizeof(s->nonce));

    if (st != SP_OK)
        return st;
    s->gate = SP__CTL_GATE_AUTH;
    return sp__ctl_send_frame(&s->base, SP__CTL_HELLO, s->nonce, sizeof(s->nonce));
}

/*
 * Server: checks the client's AUTH frame; answers WELCOME, or REFUSED for a
 * wrong MAC (SP_ERR_INVALID_PARAM; the caller logs it). The caller closes
 * the conn on failure.
 */
sp_status_t sp__ctl_hs_verify(sp__ctl_sock_t *s, const void *secret, size_t slen, uint16_t type,
                              const unsigned char *payload, size_t len)
{
    sp__ctl_conn_t *c = &s->base;
    unsigned char want[SP__CTL_MAC_SIZE], mac[SP__CTL_MAC_SIZE];
    sp__wbuf_t w;
    sp_status_t st;

    if (type != SP__CTL_AUTH || len != SP__CTL_NONCE_SIZE + SP__CTL_MAC_SIZE)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control handshake with %s: expected AUTH (type %d, %u bytes), got type "
                        "%u of %zu bytes",
                        c->peer, SP__CTL_AUTH, SP__CTL_NONCE_SIZE + SP__CTL_MAC_SIZE, type, len);
    if ((st = sp_ctl_mac(secret, slen, sp_ctl_client_label, s->nonce, payload, want)) != SP_OK)
        return st;
    if (CRYPTO_memcmp(want, payload + SP__CTL_NONCE_SIZE, SP__CTL_MAC_SIZE) != 0) {
        sp__wbuf_init(&w);
        sp__wbuf_put_str(&w, SP__CTL_WRONG_SECRET);
        if (sp__wbuf_status(&w) == SP_OK)
            (void)sp__ctl_send_frame(c, SP__CTL_REFUSED, w.data, w.len);
        sp__wbuf_free(&w);
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "control connection from %s refused: %s (its HMAC does not match)", c->peer,
                        SP__CTL_WRONG_SECRET);
    }
    if ((st = sp_ctl_mac(secret, slen, sp_ctl_server_label, payload, s->nonce, mac)) != SP_OK)
        return st;
    s->gate = SP__CTL_GATE_OPEN;
    return sp__ctl_send_frame(c, SP__CTL_WELCOME, mac, sizeof(mac));
}

/*
 * Client, first half: reads HELLO, sends AUTH, and leaves in want the MAC
 * the server's WELCOME must carry.
 */
sp_status_t sp__ctl_hs_auth(sp__ctl_sock_t *s, const void *secret, size_t slen, uint64_t deadline,
                            int timeout_ms, unsigned char *want)
{
    sp__ctl_conn_t *c = &s->base;
    unsigned char auth[SP__CTL_NONCE_SIZE + SP__CTL_MAC_SIZE], ns[SP__CTL_NONCE_SIZE];
    void *payload = NULL;
    size_t len = 0;
    uint16_t type = 0;
    sp_status_t st;

    /* Until the server proves the secret, only small frames are read from it. */
    s->gate = SP__CTL_GATE_ANSWER;
    st =
        sp__ctl_recv_frame(c, deadline, timeout_ms, "the handshake's HELLO", &type, &payload, &len);
    if (st != SP_OK)
        return st;
    if (type != SP__CTL_HELLO || len != SP__CTL_NONCE_SIZE) {
        sp__free(payload);
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control handshake with %s: expected HELLO (type %d, %u bytes), got type "
                        "%u of %zu bytes",
                        c->peer, SP__CTL_HELLO, SP__CTL_NONCE_SIZE, type, len);
    }
    memcpy(ns, payload, sizeof(ns));
    sp__free(payload);
    if ((st = sp_ctl_random(auth, SP__CTL_NONCE_SIZE)) != SP_OK ||
        (st = sp_ctl_mac(secret, slen, sp_ctl_client_label, ns, auth, auth + SP__CTL_NONCE_SIZE)) !=
            SP_OK ||
        (st = sp_ctl_mac(secret, slen, sp_ctl_server_label, auth, ns, want)) != SP_OK)
        return st;
    return sp__ctl_send_frame(c, SP__CTL_AUTH, auth, sizeof(auth));
}

/* Client, second half: WELCOME with the wanted MAC, or REFUSED. */
sp_status_t sp__ctl_hs_finish(sp__ctl_sock_t *s, const unsigned char *want, uint64_t deadline,
                              int timeout_ms)
{
    sp__ctl_conn_t *c = &s->base;
    void *payload = NULL;
    size_t len = 0;
    uint16_t type = 0;
    sp_status_t st;

    st = sp__ctl_recv_frame(c, deadline, timeout_ms, "the handshake's answer", &type, &payload,
                            &len);
    if (st == SP_ERR_PEER_LOST)
        return SP_RAISE(SP_ERR_PEER_LOST,
                        "control handshake with %s: the driver closed the connection without an "
                        "answer",
                        c->peer);
    if (st != SP_OK)
        return st;
    if (type == SP__CTL_REFUSED) {
        sp__rbuf_t r;
        char *reason = NULL;

        sp__rbuf_init(&r, payload, len);
        if (sp__rbuf_get_str(&r, "REFUSED reason", 200, &reason) != SP_OK)
            reason = NULL;
        st = SP_RAISE(SP_ERR_INVALID_PARAM, "control connection to %s: driver refused: %s", c->peer,
                      reason != NULL ? reason : "(no reason given)");
        sp__free(reason);
        sp__free(payload);
        return st;
    }
    if (type != SP__CTL_WELCOME || len != SP__CTL_MAC_SIZE) {
        sp__free(payload);
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control handshake with %s: expected WELCOME (type %d, %u bytes), got "
                        "type %u of %zu bytes",
                        c->peer, SP__CTL_WELCOME, SP__CTL_MAC_SIZE, type, len);
    }
    if (CRYPTO_memcmp(want, payload, SP__CTL_MAC_SIZE) != 0) {
        sp__free(payload);
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "control handshake with %s: the peer does not prove the secret (its "
                        "HMAC does not match); it is not our driver",
                        c->peer);
    }
    sp__free(payload);
    s->gate = SP__CTL_GATE_OPEN;
    return SP_OK;
}

sp_status_t sp__ctl_secret_from_env(const char *var, void **secret_p, size_t *len_p)
{
    const char *name = var != NULL ? var : "SPATE_SECRET";
    const char *text = getenv(name);
    size_t len;
    void *copy;

    if (text == NULL || text[0] == '\0')
        return SP_RAISE(SP_ERR_NOT_FOUND, "control secret: %s is not set", name);
    len = strlen(text);
    if (len < 16)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "control secret: %s holds %zu bytes; at least 16 are needed", name, len);
    copy = sp__malloc(len);
    if (copy == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "control secret: cannot copy %zu bytes", len);
    memcpy(copy, text, len);
    *secret_p = copy;
    *len_p = len;
    return SP_OK;
}

sp_status_t sp__ctl_secret_generate(char hex[65])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char raw[32];
    sp_status_t st = sp_ctl_random(raw, sizeof(raw));

    if (st != SP_OK)
        return st;
    for (size_t i = 0; i < sizeof(raw); i++) {
        hex[2 * i] = digits[raw[i] >> 4];
        hex[2 * i + 1] = digits[raw[i] & 15];
    }
    hex[64] = '\0';
    OPENSSL_cleanse(raw, sizeof(raw));
    return SP_OK;
}
