/* eventbus._scan: the C implementation of eventbus.scan.scan_py (read that docstring first).
 *
 * scan(data, pos, stream_id, next_seq, preview, day, rows, subjects, days, service_header)
 *     -> (pos, count, next_seq, day, newest)
 *
 * Same contract, same stopping rules, same bytes for plain deliveries (MSG): tests/test_scan.py
 * holds the two to it. Unlike scan_py it also reads headed deliveries (HMSG) of the common form
 * (see read_headers) when `service_header` is given, as `Chunk.add_headed` would write them;
 * tests/test_scan.py holds that to the observer's general path.
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
/* \t \n \v \f \r: where the wire's bytes.split() also splits a control line (besides ' ') */
#define SPLIT_SPACE(c) ((c) >= '\t' && (c) <= '\r')

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
    Py_ssize_t msg_id_at, msg_id_len, service_at, service_len;  /* len -1: None */
    int has_trace;
    char trace[33];  /* lower-case hex */
} Recent;

/* One header of a headed delivery, its name and (stripped) value as offsets into data. */
#define MAX_HEADERS 32
typedef struct { Py_ssize_t name_at, name_len, value_at, value_len; } Header;

static inline int ascii_lower(int c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

/* `header()` of records.py: the exact name first, then the first in any (ASCII) case; -1. */
static int find_header(const char *data, const Header *h, int n, const char *name,
                       Py_ssize_t name_len) {
    for (int i = 0; i < n; i++)
        if (h[i].name_len == name_len && memcmp(data + h[i].name_at, name, (size_t)name_len) == 0)
            return i;
    for (int i = 0; i < n; i++) {
        if (h[i].name_len != name_len) continue;
        Py_ssize_t k = 0;
        while (k < name_len && ascii_lower((unsigned char)data[h[i].name_at + k]) ==
                                   ascii_lower((unsigned char)name[k]))
            k++;
        if (k == name_len) return i;
    }
    return -1;
}

static inline int hex_lower(int c) {
    c = ascii_lower(c);
    return ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) ? c : -1;
}

/* `parse_traceparent`: writes the 32 + 16 lower-case hex digits of trace and span to out and
 * returns 1, or 0 when the value is not a valid W3C traceparent (version ff, zero ids). */
static int traceparent(const char *v, Py_ssize_t n, char *out) {
    char low[55];
    if (n != 55 || v[2] != '-' || v[35] != '-' || v[52] != '-') return 0;
    for (int i = 0; i < 55; i++) {
        if (i == 2 || i == 35 || i == 52) { low[i] = '-'; continue; }
        int c = hex_lower((unsigned char)v[i]);
        if (c < 0) return 0;
        low[i] = (char)c;
    }
    if (low[0] == 'f' && low[1] == 'f') return 0;
    int zero_trace = 1, zero_span = 1;
    for (int i = 3; i < 35; i++) if (low[i] != '0') zero_trace = 0;
    for (int i = 36; i < 52; i++) if (low[i] != '0') zero_span = 0;
    if (zero_trace || zero_span) return 0;
    memcpy(out, low + 3, 32);
    memcpy(out + 32, low + 36, 16);
    return 1;
}

/* Reads the header block data[at:at+n] when it is of the plain, common form: `NATS/1.0` and no
 * status, `Name: value` lines, names of visible ASCII (at most 256), values of printable ASCII
 * without `"` or `\\` once spaces and tabs around them are stripped (at most 4096), no name
 * twice, at least one header. Returns how many, or -1 to leave the delivery to Python. */
static int read_headers(const char *data, Py_ssize_t at, Py_ssize_t n, Header *h) {
    Py_ssize_t end = at + n;
    if (n < 10 || memcmp(data + at, "NATS/1.0\r\n", 10) != 0) return -1;
    int count = 0;
    Py_ssize_t p = at + 10;
    while (p < end) {
        Py_ssize_t eol = find_crlf(data, p, end);
        if (eol < 0) return -1;
        if (eol == p) { p += 2; continue; }  /* an empty line: the end of the block */
        const char *colon = memchr(data + p, ':', (size_t)(eol - p));
        if (!colon || count == MAX_HEADERS) return -1;
        Py_ssize_t name_len = (colon - data) - p;
        if (name_len < 1 || name_len > 256) return -1;
        for (Py_ssize_t i = 0; i < name_len; i++) {
            unsigned char c = (unsigned char)data[p + i];
            if (c < 0x21 || c > 0x7e || c == '"' || c == '\\') return -1;
        }
        Py_ssize_t v = (colon - data) + 1, v_end = eol;
        while (v < v_end && (data[v] == ' ' || data[v] == '\t')) v++;
        while (v_end > v && (data[v_end - 1] == ' ' || data[v_end - 1] == '\t')) v_end--;
        if (v_end - v > 4096) return -1;
        for (Py_ssize_t i = v; i < v_end; i++) {
            unsigned char c = (unsigned char)data[i];
            if (c < 0x20 || c > 0x7e || c == '"' || c == '\\') return -1;
        }
        for (int i = 0; i < count; i++)
            if (h[i].name_len == name_len && memcmp(data + h[i].name_at, data + p, (size_t)name_len) == 0)
                return -1;
        h[count].name_at = p; h[count].name_len = name_len;
        h[count].value_at = v; h[count].value_len = v_end - v;
        count++;
        p = eol + 2;
    }
    return count > 0 ? count : -1;
}

static inline char *put_text(char *o, const char *data, Py_ssize_t at, Py_ssize_t len) {
    if (len < 0) return put32(o, -1);
    o = put32(o, (int32_t)len);
    memcpy(o, data + at, (size_t)len);
    return o + len;
}

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
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "scan() takes 10 arguments");
        return NULL;
    }
    PyObject *data_obj = args[0], *rows = args[6], *subjects = args[7], *days = args[8];
    if (!PyBytes_Check(data_obj) || !PyByteArray_Check(rows) || !PyDict_Check(subjects) ||
        !PySet_Check(days)) {
        PyErr_SetString(PyExc_TypeError,
                        "scan(bytes, int, int, int, int, int, bytearray, dict, set, bytes | None)");
        return NULL;
    }
    /* the service header's name (ASCII), or None: then headed deliveries are left to Python */
    const char *service_name = NULL;
    Py_ssize_t service_len = 0;
    int headed_ok = 0;
    if (args[9] != Py_None) {
        if (!PyBytes_Check(args[9])) {
            PyErr_SetString(PyExc_TypeError, "service_header must be bytes or None");
            return NULL;
        }
        service_name = PyBytes_AS_STRING(args[9]);
        service_len = PyBytes_GET_SIZE(args[9]);
        headed_ok = 1;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    long long stream_id = PyLong_AsLongLong(args[2]);
    if (stream_id == -1 && PyErr_Occurred()) return NULL;
    int beyond = 0;  /* a next_seq past int64 (a stream sequence of 2^63 and more): read nothing */
    long long next_seq = PyLong_AsLongLongAndOverflow(args[3], &beyond);
    if (next_seq == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t preview = PyLong_AsSsize_t(args[4]);
    if (preview == -1 && PyErr_Occurred()) return NULL;
    long long day = PyLong_AsLongLong(args[5]);
    if (day == -1 && PyErr_Occurred()) return NULL;
    if (pos < 0 || preview < 0) {
        PyErr_SetString(PyExc_ValueError, "pos and preview must not be negative");
        return NULL;
    }
    if (beyond) return Py_BuildValue("(nnOLN)", pos, (Py_ssize_t)0, args[3], day, PyList_New(0));

    const char *data = PyBytes_AS_STRING(data_obj);
    const Py_ssize_t end = PyBytes_GET_SIZE(data_obj);
    Py_ssize_t count = 0;
    Recent ring[NEWEST];
    /* runs of one subject are counted locally and added to the dict when the subject changes */
    Py_ssize_t run_at = -1, run_len = 0, run_n = 0;

    Header h[MAX_HEADERS];
    for (;;) {
        /* MSG <subject> <sid> <reply> <size> | HMSG <subject> <sid> <reply> <hdr size> <size> */
        int headed;
        if (pos > end) break;  /* and no pos + 4 that could overflow */
        if (end - pos >= 4 && memcmp(data + pos, "MSG ", 4) == 0) headed = 0;
        else if (headed_ok && end - pos >= 5 && memcmp(data + pos, "HMSG ", 5) == 0) headed = 1;
        else break;
        Py_ssize_t eol = find_crlf(data, pos, end);
        if (eol < 0) break;
        /* 4 or 5 fields separated by single spaces */
        const int want = 4 + headed;
        Py_ssize_t at[5], len[5];
        Py_ssize_t p = pos + 4 + headed;
        int fields = 0;
        while (fields < want) {
            const char *sp = memchr(data + p, ' ', (size_t)(eol - p));
            Py_ssize_t stop = sp ? sp - data : eol;
            at[fields] = p;
            len[fields] = stop - p;
            fields++;
            if (!sp) break;
            p = stop + 1;
        }
        if (fields != want || at[want - 1] + len[want - 1] != eol) break;
        for (int i = 0; i < want; i++)
            if (len[i] == 0) fields = 0;
        if (fields != want) break;

        const char *subject = data + at[0];
        Py_ssize_t subject_len = len[0];
        if (subject_len > MAX_SUBJECT) break;
        int plain = 1;
        for (Py_ssize_t i = 0; i < subject_len; i++) {
            unsigned char c = (unsigned char)subject[i];
            if (c == 0 || c > 0x7f || SPLIT_SPACE(c)) { plain = 0; break; }
        }
        for (Py_ssize_t i = 0; i < len[1]; i++)  /* the sid */
            if (SPLIT_SPACE((unsigned char)data[at[1] + i])) plain = 0;
        if (!plain) break;

        /* reply: $JS.ACK. and exactly 8 dots; tokens 5 (stream seq) and 7 (timestamp) */
        const char *reply = data + at[2];
        Py_ssize_t reply_len = len[2];
        if (reply_len < 8 || memcmp(reply, "$JS.ACK.", 8) != 0) break;
        Py_ssize_t dot[8];
        int dots = 0;
        for (Py_ssize_t i = 0; i < reply_len; i++) {
            if (SPLIT_SPACE((unsigned char)reply[i])) { dots = -1; break; }
            if (reply[i] == '.') {
                if (dots == 8) { dots = 9; break; }
                dot[dots++] = i;
            }
        }
        if (dots != 8) break;
        int64_t seq = number(reply + dot[4] + 1, dot[5] - dot[4] - 1, 19);
        int64_t ts_ns = number(reply + dot[6] + 1, dot[7] - dot[6] - 1, 19);
        int64_t total = number(data + at[want - 1], len[want - 1], 9);
        int64_t header_size = headed ? number(data + at[3], len[3], 9) : 0;
        if (seq != next_seq || seq == INT64_MAX || ts_ns < 0 || total < 0 || header_size < 0 || header_size > total)
            break;
        Py_ssize_t start = eol + 2;
        if (start + total + 2 > end) break;  /* not all here yet */

        /* a headed delivery: its headers, and what the tap reads from them */
        int n_headers = 0, has_trace = 0;
        char trace[48];
        Py_ssize_t msg_at = 0, msg_len = -1, svc_at = 0, svc_len = -1, doc_len = 0;
        if (headed) {
            n_headers = read_headers(data, start, (Py_ssize_t)header_size, h);
            if (n_headers < 0) break;
            int i = find_header(data, h, n_headers, "traceparent", 11);
            if (i >= 0) has_trace = traceparent(data + h[i].value_at, h[i].value_len, trace);
            i = find_header(data, h, n_headers, "Nats-Msg-Id", 11);
            if (i >= 0 && h[i].value_len > 1024) break;
            if (i >= 0 && h[i].value_len > 0) { msg_at = h[i].value_at; msg_len = h[i].value_len; }
            i = service_len > 0 ? find_header(data, h, n_headers, service_name, service_len) : -1;
            if (i >= 0 && h[i].value_len > 256) break;
            if (i >= 0 && h[i].value_len > 0) { svc_at = h[i].value_at; svc_len = h[i].value_len; }
            doc_len = 1 + 2 + (n_headers - 1);  /* version byte, {}, commas */
            for (int k = 0; k < n_headers; k++) doc_len += h[k].name_len + h[k].value_len + 5;
        }
        Py_ssize_t payload_at = start + (Py_ssize_t)header_size;
        int64_t size = total - header_size;
        int tail = headed && (has_trace || msg_len >= 0 || svc_len >= 0);

        int64_t ts = ts_ns / 1000 + (ts_ns % 1000 >= 500) - PG_EPOCH_US;  /* (ts_ns+500)//1000 */
        Py_ssize_t kept = size > preview ? preview : (Py_ssize_t)size;
        Py_ssize_t row_len = 2 + 12 * 3 + 4 + subject_len + 8 + 5 * 4 + 4 + kept + 5 + doc_len +
                             (tail ? (msg_len > 0 ? msg_len : 0) + (has_trace ? 48 : 0) +
                                     (svc_len > 0 ? svc_len : 0) : 0);
        Py_ssize_t old = PyByteArray_GET_SIZE(rows);
        if (PyByteArray_Resize(rows, old + row_len) < 0) return NULL;
        char *o = PyByteArray_AS_STRING(rows) + old;
        o = put16(o, COPY_COLUMNS);
        o = put32(o, 8); o = put64(o, stream_id);
        o = put32(o, 8); o = put64(o, seq);
        o = put32(o, 8); o = put64(o, ts);
        o = put32(o, (int32_t)subject_len); memcpy(o, subject, (size_t)subject_len); o += subject_len;
        o = put32(o, 4); o = put32(o, (int32_t)size);
        if (headed) {  /* jsonb: version 1, then {"name":"value",...} in the block's order */
            o = put32(o, (int32_t)doc_len);
            *o++ = 1;
            *o++ = '{';
            for (int k = 0; k < n_headers; k++) {
                if (k) *o++ = ',';
                *o++ = '"'; memcpy(o, data + h[k].name_at, (size_t)h[k].name_len); o += h[k].name_len;
                *o++ = '"'; *o++ = ':';
                *o++ = '"'; memcpy(o, data + h[k].value_at, (size_t)h[k].value_len); o += h[k].value_len;
                *o++ = '"';
            }
            *o++ = '}';
        } else {
            o = put32(o, -1);
        }
        if (tail) {  /* msg_id, trace_id, span_id, service */
            o = put_text(o, data, msg_at, msg_len);
            if (has_trace) {
                o = put32(o, 32); memcpy(o, trace, 32); o += 32;
                o = put32(o, 16); memcpy(o, trace + 32, 16); o += 16;
            } else {
                o = put32(o, -1); o = put32(o, -1);
            }
            o = put_text(o, data, svc_at, svc_len);
        } else {
            for (int i = 0; i < 4; i++) o = put32(o, -1);
        }
        o = put32(o, (int32_t)kept); memcpy(o, data + payload_at, (size_t)kept); o += kept;
        o = put32(o, 1); *o++ = (char)(size > preview);
        if (o != PyByteArray_AS_STRING(rows) + old + row_len) {
            PyErr_SetString(PyExc_SystemError, "eventbus._scan: row length miscounted");
            return NULL;
        }

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
        r->msg_id_at = msg_at; r->msg_id_len = msg_len; r->service_at = svc_at; r->service_len = svc_len;
        r->has_trace = has_trace;
        if (has_trace) { memcpy(r->trace, trace, 32); r->trace[32] = 0; }
        count++;
        next_seq = seq + 1;
        pos = start + total + 2;
    }
    if (run_at >= 0 && count_subject(subjects, data, run_at, run_len, run_n) < 0) return NULL;

    Py_ssize_t keep = count < NEWEST ? count : NEWEST;
    PyObject *newest = PyList_New(keep);
    if (!newest) return NULL;
    for (Py_ssize_t i = 0; i < keep; i++) {
        Recent *r = &ring[(count - keep + i) % NEWEST];
        PyObject *item = Py_BuildValue(
            "(LLy#Lz#z#z#)", (long long)r->seq, (long long)r->ts, data + r->subject_at,
            r->subject_len, (long long)r->size,
            r->service_len < 0 ? NULL : data + r->service_at, r->service_len < 0 ? 0 : r->service_len,
            r->has_trace ? r->trace : NULL, (Py_ssize_t)(r->has_trace ? 32 : 0),
            r->msg_id_len < 0 ? NULL : data + r->msg_id_at, r->msg_id_len < 0 ? 0 : r->msg_id_len);
        if (!item) { Py_DECREF(newest); return NULL; }
        PyList_SET_ITEM(newest, i, item);
    }
    return Py_BuildValue("(nnLLN)", pos, count, next_seq, day, newest);
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(data, pos, stream_id, next_seq, preview, day, rows, subjects, days, service_header) -> "
     "(pos, count, next_seq, day, newest): see eventbus.scan."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan", "C implementation of eventbus.scan.scan_py.", -1, methods,
};

#ifndef SOURCE_SHA256
#define SOURCE_SHA256 ""
#endif

PyMODINIT_FUNC PyInit__scan(void) {
    PyObject *m = PyModule_Create(&module);
    /* setup.py passes the SHA-256 of this file: eventbus/scan.py refuses a binary of older source */
    if (m && PyModule_AddStringConstant(m, "SOURCE_SHA256", SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
