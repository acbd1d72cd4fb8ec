/* eventbus._scan: the C implementation of eventbus.scan.scan_py (read that docstring first).
 *
 * scan(data, pos, stream_id, next_seq, preview, day, rows, subjects, days)
 *     -> (pos, count, next_seq, day, newest)
 *
 * Same contract, same stopping rules, same bytes: tests/test_scan.py holds the two to it.
 * Everything it reads is bounds-checked against len(data); anything unusual stops the scan and
 * is left to the Python path, so this file only ever handles the common case.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define COPY_COLUMNS 12
#define MAX_SUBJECT 1024
#define NEWEST 20
#define PG_EPOCH_US 946684800000000LL
#define DAY_US 86400000000LL

/* A decimal token of 1..digits digits that fits int64, else -1. */
static int64_t number(const char *p, Py_ssize_t n, Py_ssize_t digits) {
    if (n < 1 || n > digits) return -1;
    uint64_t v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned d = (unsigned char)p[i] - '0';
        if (d > 9) return -1;
        v = v * 10 + d;  /* at most 19 digits: < 10^19 < 2^64, no overflow */
    }
    if (v > (uint64_t)INT64_MAX) return -1;
    return (int64_t)v;
}

static inline char *put16(char *o, int v) {
    o[0] = (char)((v >> 8) & 0xff);
    o[1] = (char)(v & 0xff);
    return o + 2;
}

static inline char *put32(char *o, int32_t v) {
    uint32_t u = (uint32_t)v;
    o[0] = (char)(u >> 24); o[1] = (char)(u >> 16); o[2] = (char)(u >> 8); o[3] = (char)u;
    return o + 4;
}

static inline char *put64(char *o, int64_t v) {
    uint64_t u = (uint64_t)v;
    for (int i = 7; i >= 0; i--) { o[i] = (char)(u & 0xff); u >>= 8; }
    return o + 8;
}

/* Where the first CRLF at or after `from` is, or -1: bytes.find(b"\r\n", from). */
static Py_ssize_t find_crlf(const char *data, Py_ssize_t from, Py_ssize_t end) {
    while (from + 1 < end) {
        const char *cr = memchr(data + from, '\r', (size_t)(end - from - 1));
        if (!cr) return -1;
        if (cr[1] == '\n') return cr - data;
        from = cr - data + 1;
    }
    return -1;
}

/* floor division, as Python's // */
static inline int64_t floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

typedef struct {
    int64_t seq, ts, size;
    Py_ssize_t subject_at, subject_len;
} Recent;

/* Add `n` events of the subject at data[at:at+len] to the subjects dict. */
static int count_subject(PyObject *subjects, const char *data, Py_ssize_t at, Py_ssize_t len,
                         Py_ssize_t n) {
    PyObject *key = PyBytes_FromStringAndSize(data + at, len);
    if (!key) return -1;
    PyObject *old = PyDict_GetItemWithError(subjects, key);  /* borrowed */
    if (!old && PyErr_Occurred()) { Py_DECREF(key); return -1; }
    Py_ssize_t have = old ? PyLong_AsSsize_t(old) : 0;
    if (have == -1 && PyErr_Occurred()) { Py_DECREF(key); return -1; }
    PyObject *value = PyLong_FromSsize_t(have + n);
    if (!value) { Py_DECREF(key); return -1; }
    int rc = PyDict_SetItem(subjects, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    return rc;
}

static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "scan() takes 9 arguments");
        return NULL;
    }
    PyObject *data_obj = args[0], *rows = args[6], *subjects = args[7], *days = args[8];
    if (!PyBytes_Check(data_obj) || !PyByteArray_Check(rows) || !PyDict_Check(subjects) ||
        !PySet_Check(days)) {
        PyErr_SetString(PyExc_TypeError, "scan(bytes, int, int, int, int, int, bytearray, dict, set)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    long long stream_id = PyLong_AsLongLong(args[2]);
    long long next_seq = PyLong_AsLongLong(args[3]);
    Py_ssize_t preview = PyLong_AsSsize_t(args[4]);
    long long day = PyLong_AsLongLong(args[5]);
    if (PyErr_Occurred()) return NULL;
    if (pos < 0 || preview < 0) {
        PyErr_SetString(PyExc_ValueError, "pos and preview must not be negative");
        return NULL;
    }

    const char *data = PyBytes_AS_STRING(data_obj);
    const Py_ssize_t end = PyBytes_GET_SIZE(data_obj);
    Py_ssize_t count = 0;
    Recent ring[NEWEST];
    /* runs of one subject are counted locally and added to the dict when the subject changes */
    Py_ssize_t run_at = -1, run_len = 0, run_n = 0;

    while (pos + 4 <= end && memcmp(data + pos, "MSG ", 4) == 0) {
        Py_ssize_t eol = find_crlf(data, pos, end);
        if (eol < 0) break;
        /* four fields separated by single spaces: subject sid reply size */
        Py_ssize_t at[4], len[4];
        Py_ssize_t p = pos + 4;
        int fields = 0;
        while (fields < 4) {
            const char *sp = memchr(data + p, ' ', (size_t)(eol - p));
            Py_ssize_t stop = sp ? sp - data : eol;
            at[fields] = p;
            len[fields] = stop - p;
            fields++;
            if (!sp) break;
            p = stop + 1;
        }
        if (fields != 4 || at[3] + len[3] != eol) break;
        for (int i = 0; i < 4; i++)
            if (len[i] == 0) fields = 0;
        if (fields != 4) break;

        const char *subject = data + at[0];
        Py_ssize_t subject_len = len[0];
        if (subject_len > MAX_SUBJECT) break;
        int plain = 1;
        for (Py_ssize_t i = 0; i < subject_len; i++) {
            unsigned char c = (unsigned char)subject[i];
            if (c == 0 || c > 0x7f) { plain = 0; break; }
        }
        if (!plain) break;

        /* reply: $JS.ACK. and exactly 8 dots; tokens 5 (stream seq) and 7 (timestamp) */
        const char *reply = data + at[2];
        Py_ssize_t reply_len = len[2];
        if (reply_len < 8 || memcmp(reply, "$JS.ACK.", 8) != 0) break;
        Py_ssize_t dot[8];
        int dots = 0;
        for (Py_ssize_t i = 0; i < reply_len; i++) {
            if (reply[i] == '.') {
                if (dots == 8) { dots = 9; break; }
                dot[dots++] = i;
            }
        }
        if (dots != 8) break;
        int64_t seq = number(reply + dot[4] + 1, dot[5] - dot[4] - 1, 19);
        int64_t ts_ns = number(reply + dot[6] + 1, dot[7] - dot[6] - 1, 19);
        int64_t size = number(data + at[3], len[3], 9);
        if (seq != next_seq || ts_ns < 0 || size < 0) break;
        Py_ssize_t start = eol + 2;
        if (start + size + 2 > end) break;  /* not all here yet */

        int64_t ts = floordiv(ts_ns + 500, 1000) - PG_EPOCH_US;
        Py_ssize_t kept = size > preview ? preview : (Py_ssize_t)size;
        Py_ssize_t row_len = 2 + 12 * 3 + 4 + subject_len + 8 + 5 * 4 + 4 + kept + 5;
        Py_ssize_t old = PyByteArray_GET_SIZE(rows);
        if (PyByteArray_Resize(rows, old + row_len) < 0) return NULL;
        char *o = PyByteArray_AS_STRING(rows) + old;
        o = put16(o, COPY_COLUMNS);
        o = put32(o, 8); o = put64(o, stream_id);
        o = put32(o, 8); o = put64(o, seq);
        o = put32(o, 8); o = put64(o, ts);
        o = put32(o, (int32_t)subject_len); memcpy(o, subject, (size_t)subject_len); o += subject_len;
        o = put32(o, 4); o = put32(o, (int32_t)size);
        for (int i = 0; i < 5; i++) o = put32(o, -1);  /* headers, msg_id, trace, span, service */
        o = put32(o, (int32_t)kept); memcpy(o, data + start, (size_t)kept); o += kept;
        o = put32(o, 1); *o++ = (char)(size > preview);

        if (run_at >= 0 && (run_len != subject_len || memcmp(data + run_at, subject, (size_t)subject_len) != 0)) {
            if (count_subject(subjects, data, run_at, run_len, run_n) < 0) return NULL;
            run_at = -1;
        }
        if (run_at < 0) { run_at = at[0]; run_len = subject_len; run_n = 0; }
        run_n++;

        int64_t event_day = floordiv(ts, DAY_US);
        if (event_day != day) {
            day = event_day;
            PyObject *d = PyLong_FromLongLong(day);
            if (!d) return NULL;
            int rc = PySet_Add(days, d);
            Py_DECREF(d);
            if (rc < 0) return NULL;
        }
        Recent *r = &ring[count % NEWEST];
        r->seq = seq; r->ts = ts; r->size = size; r->subject_at = at[0]; r->subject_len = subject_len;
        count++;
        next_seq = seq + 1;
        pos = start + size + 2;
    }
    if (run_at >= 0 && count_subject(subjects, data, run_at, run_len, run_n) < 0) return NULL;

    Py_ssize_t keep = count < NEWEST ? count : NEWEST;
    PyObject *newest = PyList_New(keep);
    if (!newest) return NULL;
    for (Py_ssize_t i = 0; i < keep; i++) {
        Recent *r = &ring[(count - keep + i) % NEWEST];
        PyObject *item = Py_BuildValue("(LLy#LOOO)", (long long)r->seq, (long long)r->ts,
                                       data + r->subject_at, r->subject_len, (long long)r->size,
                                       Py_None, Py_None, Py_None);
        if (!item) { Py_DECREF(newest); return NULL; }
        PyList_SET_ITEM(newest, i, item);
    }
    return Py_BuildValue("(nnLLN)", pos, count, next_seq, day, newest);
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(data, pos, stream_id, next_seq, preview, day, rows, subjects, days) -> "
     "(pos, count, next_seq, day, newest): see eventbus.scan."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan", "C implementation of eventbus.scan.scan_py.", -1, methods,
};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
