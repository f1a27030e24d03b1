/* A static probe run inside RUN steps by the sandbox security tests
 * (tests/builder/sandboxprobe.py builds it). Each argument names one attempt;
 * for each the probe prints "NAME ok" or "NAME errno=N" (readkey also prints what
 * it read). The probe exits 0 whatever the attempts gave. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long rc, int err)
{
    if (rc < 0)
        printf("%s errno=%d\n", name, err);
    else
        printf("%s ok\n", name);
}

static long reap(long pid)
{
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    return pid;
}

static void *thread_main(void *arg) { return arg; }

static void attempt(const char *what)
{
    long rc;
    int err;
    errno = 0;
    if (!strcmp(what, "keyctl")) {
        rc = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
    } else if (!strcmp(what, "add_key")) {
        rc = syscall(SYS_add_key, "user", "lamina-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING);
    } else if (!strcmp(what, "request_key")) {
        rc = syscall(SYS_request_key, "user", "lamina-probe", NULL, 0);
    } else if (!strncmp(what, "readkey=", 8)) {
        /* search the session keyring for a user key and print its payload */
        char payload[256];
        rc = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, "user", what + 8, 0);
        err = errno;
        if (rc >= 0) {
            long n = syscall(SYS_keyctl, KEYCTL_READ, rc, payload, sizeof payload - 1);
            if (n >= 0 && n < (long)sizeof payload) {
                payload[n] = 0;
                printf("readkey payload=%s\n", payload);
            }
        }
        report("readkey", rc, err);
        return;
    } else if (!strcmp(what, "perf_event_open")) {
        struct perf_event_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.size = sizeof attr;
        attr.type = PERF_TYPE_SOFTWARE;
        attr.config = PERF_COUNT_SW_TASK_CLOCK;
        attr.exclude_kernel = 1;
        attr.exclude_hv = 1;
        rc = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
    } else if (!strcmp(what, "bpf")) {
        char attr[128];
        memset(attr, 0, sizeof attr);
        rc = syscall(SYS_bpf, 0x7fff, attr, sizeof attr); /* no such command: EINVAL */
    } else if (!strcmp(what, "userfaultfd")) {
        rc = syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */);
    } else if (!strcmp(what, "io_uring_setup")) {
        struct io_uring_params params;
        memset(&params, 0, sizeof params);
        rc = syscall(SYS_io_uring_setup, 1, &params);
    } else if (!strcmp(what, "clone3")) {
        struct clone_args args;
        memset(&args, 0, sizeof args);
        args.exit_signal = SIGCHLD;
        rc = reap(syscall(SYS_clone3, &args, sizeof args));
    } else if (!strcmp(what, "clone")) {
        rc = reap(syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0));
    } else if (!strcmp(what, "clone_newuser")) {
        rc = reap(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
    } else if (!strcmp(what, "unshare_newuser")) {
        rc = syscall(SYS_unshare, CLONE_NEWUSER);
    } else if (!strcmp(what, "thread")) {
        pthread_t t;
        int e = pthread_create(&t, NULL, thread_main, NULL);
        if (e == 0)
            pthread_join(t, NULL);
        report(what, e ? -1 : 0, e);
        return;
    } else if (!strcmp(what, "personality_query")) {
        rc = syscall(SYS_personality, 0xffffffffUL);
    } else if (!strcmp(what, "personality_linux32")) {
        rc = syscall(SYS_personality, (unsigned long)PER_LINUX32);
        if (rc >= 0)
            syscall(SYS_personality, (unsigned long)PER_LINUX);
    } else if (!strcmp(what, "personality_no_randomize")) {
        rc = syscall(SYS_personality, (unsigned long)(PER_LINUX | ADDR_NO_RANDOMIZE));
    } else if (!strcmp(what, "socket_vsock")) {
        rc = socket(40 /* AF_VSOCK */, SOCK_STREAM, 0);
    } else if (!strcmp(what, "socket_alg")) {
        rc = socket(38 /* AF_ALG */, SOCK_SEQPACKET, 0);
    } else if (!strcmp(what, "socket_unix")) {
        rc = socket(AF_UNIX, SOCK_STREAM, 0);
    } else if (!strcmp(what, "ids")) {
        printf("ids uid=%d euid=%d\n", (int)getuid(), (int)geteuid());
        return;
    } else {
        printf("%s unknown\n", what);
        return;
    }
    err = errno;
    report(what, rc, err);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++)
        attempt(argv[i]);
    return 0;
}
