/*
 * Open-file-description locks for duratom's copy of SQLite (Linux).
 *
 * SQLite's unix VFS locks with POSIX advisory locks, which belong to the
 * process: a second SQLite copy in the same process (an application's
 * sqlite-jdbc) takes locks that never conflict with ours, and its close() of
 * a descriptor drops ours; in WAL mode it then believes itself the last
 * connection and checkpoints and resets the WAL under us.
 *
 * These replacements for the VFS's open, close and fcntl make our copy's
 * locks open-file-description (OFD) locks instead. OFD locks conflict with
 * POSIX locks, also within one process and across processes, and only a
 * close of their own open file description releases them.
 *
 * SQLite shares one lock state per inode among all its connections in the
 * process (it relies on POSIX locks having one owner per process). To keep
 * that, every lock of our copy on an inode goes through one descriptor: a
 * duplicate of the first descriptor that locked it, kept until our copy
 * has closed every descriptor it opened on that inode.
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

struct inode_locks {
    dev_t dev;
    ino_t ino;
    /* Descriptors our copy has open on the inode. */
    long open_fds;
    /* The descriptor all our locks on the inode use; -1 until one is taken. */
    int lock_fd;
    struct inode_locks *next;
};

static pthread_mutex_t inodes_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct inode_locks *inodes;

/* Set when the kernel refuses OFD locks (before Linux 3.15): locks are then
 * plain POSIX locks, as without these replacements. */
static volatile int ofd_unsupported;

static struct inode_locks *find(dev_t dev, ino_t ino) {
    for (struct inode_locks *i = inodes; i; i = i->next) {
        if (i->dev == dev && i->ino == ino) return i;
    }
    return NULL;
}

static struct inode_locks *find_or_add(dev_t dev, ino_t ino) {
    struct inode_locks *i = find(dev, ino);
    if (i) return i;
    i = calloc(1, sizeof *i);
    if (!i) return NULL;
    i->dev = dev;
    i->ino = ino;
    i->lock_fd = -1;
    i->next = inodes;
    inodes = i;
    return i;
}

static void drop(struct inode_locks *gone) {
    for (struct inode_locks **p = &inodes; *p; p = &(*p)->next) {
        if (*p == gone) {
            *p = gone->next;
            if (gone->lock_fd >= 0) close(gone->lock_fd);
            free(gone);
            return;
        }
    }
}

int duratom_ofd_open(const char *path, int flags, int mode) {
    int fd = open(path, flags, mode);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0) {
        pthread_mutex_lock(&inodes_mutex);
        struct inode_locks *i = find_or_add(st.st_dev, st.st_ino);
        if (i) i->open_fds++;
        pthread_mutex_unlock(&inodes_mutex);
    }
    return fd;
}

int duratom_ofd_close(int fd) {
    struct stat st;
    if (fstat(fd, &st) == 0) {
        pthread_mutex_lock(&inodes_mutex);
        struct inode_locks *i = find(st.st_dev, st.st_ino);
        if (i && --i->open_fds <= 0) drop(i);
        pthread_mutex_unlock(&inodes_mutex);
    }
    return close(fd);
}

/* The OFD command for a POSIX lock command, or 0 for other commands. */
static int ofd_command(int cmd) {
    switch (cmd) {
    case F_SETLK: return F_OFD_SETLK;
    case F_SETLKW: return F_OFD_SETLKW;
    case F_GETLK: return F_OFD_GETLK;
    default: return 0;
    }
}

int duratom_ofd_fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    /* As glibc's fcntl: the optional third argument read as a pointer. */
    void *arg = va_arg(ap, void *);
    va_end(ap);

    int ofd_cmd = ofd_command(cmd);
    if (!ofd_cmd || ofd_unsupported) return fcntl(fd, cmd, arg);

    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    pthread_mutex_lock(&inodes_mutex);
    struct inode_locks *i = find_or_add(st.st_dev, st.st_ino);
    if (!i) {
        pthread_mutex_unlock(&inodes_mutex);
        errno = ENOLCK;
        return -1;
    }
    if (i->open_fds == 0) i->open_fds = 1; /* opened before these replacements */
    if (i->lock_fd < 0) {
        i->lock_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (i->lock_fd < 0) {
            int e = errno;
            pthread_mutex_unlock(&inodes_mutex);
            errno = e;
            return -1;
        }
    }
    /* Stays open while fd is: our copy counts fd among the inode's. */
    int lock_fd = i->lock_fd;
    pthread_mutex_unlock(&inodes_mutex);

    struct flock *caller = arg;
    struct flock lock = *caller;
    lock.l_pid = 0; /* OFD locks require it */
    int rc = fcntl(lock_fd, ofd_cmd, &lock);
    int e = errno;
    if (rc != 0 && e == EINVAL) {
        ofd_unsupported = 1;
        rc = fcntl(fd, cmd, arg);
        e = errno;
    } else if (rc == 0 && cmd == F_GETLK) {
        *caller = lock;
    }
    errno = e;
    return rc;
}

/* 1 when the kernel refused OFD locks and POSIX locks are used instead. */
int duratom_ofd_unsupported(void) {
    return ofd_unsupported;
}
