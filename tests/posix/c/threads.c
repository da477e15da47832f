#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <sys/syscall.h>

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static long counter; static int ready;
static __thread int tls_value;

static void *work(void *arg) {
    long id = (long)arg;
    tls_value = (int)id * 10;
    for (int i = 0; i < 1000; i++) {
        pthread_mutex_lock(&m); counter++; if (i % 100 == 0) sched_yield(); pthread_mutex_unlock(&m);
    }
    pthread_mutex_lock(&m);
    while (!ready) pthread_cond_wait(&cv, &m);
    pthread_mutex_unlock(&m);
    return (void *)(long)(tls_value + 1);
}

static int fds[2]; static long reader_tid;
static long gettid_(void) { return syscall(SYS_gettid); }
static void *reader(void *arg) {
    (void)arg; char buf[8]; reader_tid = gettid_();
    return (void *)(long)read(fds[0], buf, sizeof buf);
}

int main(void) {
    pthread_t t[4];
    tls_value = 7;
    for (long i = 0; i < 4; i++) if (pthread_create(&t[i], 0, work, (void *)(i + 1))) { puts("create failed"); return 1; }
    usleep(1000);
    pthread_mutex_lock(&m); ready = 1; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&m);
    long sum = 0;
    for (int i = 0; i < 4; i++) { void *r; pthread_join(t[i], &r); sum += (long)r; }
    printf("counter=%ld sum=%ld main_tls=%d\n", counter, sum, tls_value);
    /* a timed wait that times out */
    struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts); ts.tv_nsec += 5000000;
    if (ts.tv_nsec >= 1000000000) { ts.tv_sec++; ts.tv_nsec -= 1000000000; }
    pthread_mutex_lock(&m);
    int rc = pthread_cond_timedwait(&cv, &m, &ts);
    pthread_mutex_unlock(&m);
    printf("timedwait=%s\n", rc ? "timeout" : "ok");
    /* one thread blocks reading a pipe the other writes later: the reader must not stop the writer */
    pthread_t r;
    if (pipe(fds)) return 1;
    pthread_create(&r, 0, reader, 0);
    usleep(2000);
    write(fds[1], "ping", 4);
    void *got; pthread_join(r, &got);
    printf("reader got %ld bytes, tids differ=%d\n", (long)got, reader_tid != gettid_());
    return 0;
}
