// A stand-in for a file system without file locks (NFS without lockd, some FUSE mounts):
// preloaded into `par`, it answers ENOLCK to every fcntl(F_SETLK) on a file named `lock`.
// tests/reliability_run_dir_test.cpp runs `par train` with it.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int names_a_lock_file(int fd) {
  char link[64], target[4096];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(link, target, sizeof target - 1);
  if (n < 5) return 0;
  target[n] = '\0';
  return strcmp(target + n - 5, "/lock") == 0;
}

static int call(const char* symbol, int fd, int cmd, void* arg) {
  if (cmd == F_SETLK && names_a_lock_file(fd)) {
    errno = ENOLCK;
    return -1;
  }
  int (*real)(int, int, ...) = (int (*)(int, int, ...))dlsym(RTLD_NEXT, symbol);
  return real(fd, cmd, arg);
}

int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  return call("fcntl", fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  return call("fcntl64", fd, cmd, arg);
}
