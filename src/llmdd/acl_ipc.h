/* ACL IPC memory facts that CANN's headers do not spell out (docs/facts.md section 10): both the
 * host runtime and the Cython binding size export keys with it. */
#ifndef LLMDD_ACL_IPC_H
#define LLMDD_ACL_IPC_H

/* aclrtIpcMemGetExportKey's key buffer: the runtime docs fix `len` at 65 (64 characters and
 * the terminating NUL). */
#define LLMDD_ACL_IPC_KEY_BYTES 65

#endif
