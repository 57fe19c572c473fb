/* The cheapest milter libmilter allows: it signs nothing and answers only at the end of the message
 * (with "noreply"). scripts/benchmark-signing --signers noop-milter measures what the milter protocol
 * alone costs an instance, the floor under any milter signer. Usage: noop-milter SOCKET [noreply] */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int noreply;

static sfsistat negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2, unsigned long f3,
                          unsigned long *pf0, unsigned long *pf1, unsigned long *pf2, unsigned long *pf3) {
	*pf0 = SMFIF_ADDHDRS;
	*pf1 = SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NOUNKNOWN | SMFIP_NODATA;
	if (noreply) *pf1 |= (SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY) & f1;
	*pf2 = *pf3 = 0;
	return SMFIS_CONTINUE;
}
static sfsistat reply(void) { return noreply ? SMFIS_NOREPLY : SMFIS_CONTINUE; }
static sfsistat header(SMFICTX *ctx, char *f, char *v) { return reply(); }
static sfsistat eoh(SMFICTX *ctx) { return reply(); }
static sfsistat body(SMFICTX *ctx, unsigned char *b, size_t n) { return reply(); }
static sfsistat eom(SMFICTX *ctx) { return SMFIS_ACCEPT; }

int main(int argc, char **argv) {
	struct smfiDesc desc = { "noop", SMFI_VERSION, SMFIF_ADDHDRS, NULL, NULL, NULL, NULL, header, eoh, body,
	                         eom, NULL, NULL, NULL, NULL, negotiate };
	char conn[512];
	if (argc < 2) {
		fprintf(stderr, "usage: noop-milter SOCKET [noreply]\n");
		return 2;
	}
	noreply = argc > 2 && strcmp(argv[2], "noreply") == 0;
	snprintf(conn, sizeof conn, "unix:%s", argv[1]);
	unlink(argv[1]);
	smfi_setconn(conn);
	if (smfi_register(desc) != MI_SUCCESS) return 1;
	if (smfi_opensocket(1) != MI_SUCCESS) return 1;
	return smfi_main();
}
