# The packed time loop of every cell (sequences of different lengths, no compute on
# padding), included at the end of driver.pxi; fastlstm/backends/packing.py lays the rows
# out and documents the layout.
#
# Rows are sorted by length and dealt to n groups (one per thread of the loop), each group
# a block of batch rows [gb0[k], gb0[k+1]) sorted by length, longest first. At time t the
# rows still running are a prefix of each group: cnt[t*n+k] rows, which lie in the packed
# arrays (X, Z, the saved states, Y, DY: [N, .], N the sum of all rows' lengths) from row
# start[t*n+k] on. The driver's setup ran on the packed rows as one step of N rows (so the
# projection, the saved states and the weight gradients are products over N rows only);
# the time loop then runs each step of each group as a one-step problem (a copy of the
# struct, its pointers moved to that step's packed rows and the group's state rows)
# through the cell's own forward_rows / backward_rows: a step computes only its running
# rows, and a finished row's state stays as it is (what a mask does to padded steps).
# The groups never share a row, so their threads meet only at the end, as forward_loop's.
#
# Zoneout (Krueger et al., haste's form) runs on this loop too (all rows of full length when
# there is no padding): around each step, h_t = h_{t-1} + m_t * (h~_t - h_{t-1}), m_t the
# packed keep mask (training) or 1 - p (inference); BPTT gives h~_t the share m_t of dh_t and
# carries (1 - m_t) dh_t to h_{t-1}.

cdef class Packed:
    """The layout arguments of a packed pass, checked once: T, the groups n, start [T*n]
    int64, cnt [T*n] int32, gb0 [n+1] int32 (fastlstm/backends/packing.py)."""
    cdef public long T
    cdef public int n
    cdef const long[::1] start
    cdef const int[::1] cnt
    cdef const int[::1] gb0
    cdef public object arrays
    # Zoneout: zoned, the keep mask packed [N*H] of the call's dtype (training) or None with
    # keep = 1 - p (inference); widest: the most rows a group has.
    cdef public bint zoned
    cdef public object zoneout
    cdef public double keep
    cdef public int widest

    def __init__(self, long T, int n, start, cnt, gb0):
        if T < 1 or n < 1:
            raise ValueError(f"packing: expected T >= 1 and n >= 1, got {T}, {n}")
        self.T, self.n = T, n
        self.zoned, self.zoneout, self.keep = False, None, 1.0
        self.arrays = (np.ascontiguousarray(start, np.int64),
                       np.ascontiguousarray(cnt, np.int32), np.ascontiguousarray(gb0, np.int32))
        self.start, self.cnt, self.gb0 = self.arrays
        if self.start.shape[0] != T * n or self.cnt.shape[0] != T * n or self.gb0.shape[0] != n + 1:
            raise ValueError("packing: start and cnt need T*n entries, gb0 n+1")
        self.widest = int(np.max(np.diff(self.arrays[2])))


def packed_groups(long T, int B, int H, int G, settings=None):
    """How many groups (threads) the packed loop of a [T,B] problem runs: row_chunks's."""
    cdef Settings s
    read_settings(&s, settings)
    return row_chunks(&s, T, B, H, G)


cdef inline void *moved(void *a, long n, long elements) noexcept nogil:
    """a + elements, NULL staying NULL (arrays of the cell that a pass may not have)."""
    if a == NULL:
        return NULL
    if n == 4:
        return <void *>(<float *>a + elements)
    return <void *>(<double *>a + elements)


cdef inline void zoneout_mix(long n, const floating *hp, const floating *zm, floating keep,
                             floating *h) noexcept nogil:
    """h = hp + m * (h - hp): m from zm (training) or keep."""
    cdef long i
    if zm != NULL:
        for i in range(n):
            h[i] = hp[i] + zm[i] * (h[i] - hp[i])
    else:
        for i in range(n):
            h[i] = hp[i] + keep * (h[i] - hp[i])


cdef void packed_forward_group(const Fwd *p, long T, int n, int k, const long *start,
                               const int *cnt, int b0, const floating *zm, floating keep,
                               floating *hp, floating *scratch) noexcept nogil:
    """Group k's time loop: each step on its running rows, the state in place in p.h
    (p.c) rows [b0, ...); when training the LSTM's cell state is also saved (C), and the
    outputs go to their packed rows of Y. hp (zoneout only, else NULL): the group's h
    before the step."""
    cdef Fwd v = p[0]
    cdef long H = p.H, s, t, r, sz = sizeof(floating)
    cdef int c
    v.T, v.zt0, v.go_backwards, v.return_sequences = 1, 0, False, False
    v.mask, v.qsplit, v.ncols, v.out = NULL, False, 0, NULL
    v.h = moved(p.h, sz, b0 * H)
    v.c = moved(p.c, sz, b0 * H)
    v.rdrop = moved(p.rdrop, sz, b0 * H)
    v.hd = moved(p.hd, sz, b0 * H)
    if not p.training:
        v.RH = moved(p.RH, sz, b0 * H)        # the GRU's [B,H] work space at inference
    for s in range(T):
        t = T - 1 - s if p.go_backwards else s
        c = cnt[t * n + k]
        if c == 0:
            continue
        r = start[t * n + k]
        v.Z = moved(p.Z, sz, r * p.ZW)
        if p.training:
            v.HIN = moved(p.HIN, sz, r * H)
            v.HPREV = moved(p.HPREV, sz, r * H)
            v.C = moved(p.C, sz, r * H)
            v.RH = moved(p.RH, sz, r * H)
            v.ln.RN = moved(p.ln.RN, sz, r * p.G)
            v.ln.RS = moved(p.ln.RS, sz, r)
            v.ln.CN = moved(p.ln.CN, sz, r * H)
            v.ln.CS = moved(p.ln.CS, sz, r)
        if hp != NULL:
            memcpy(hp, v.h, c * H * sz)
        forward_rows(&v, 0, c, 0, 1, scratch)
        if hp != NULL:
            zoneout_mix(c * H, hp, zm + r * H if zm != NULL else NULL, keep, <floating *>v.h)
        if p.training and p.C != NULL:        # the step wrote c_t to C: the state is in v.c
            memcpy(v.c, v.C, c * H * sz)
        if p.Y != NULL:
            memcpy(<floating *>p.Y + r * H, v.h, c * H * sz)


cdef int packed_forward(Fwd *p, Packed packing, floating *scratch) except -1:
    """The input projection of all N packed rows, then every group's time loop (scratch:
    p.scratch elements per group), with the packing's zoneout if any."""
    cdef long k, T = packing.T
    cdef int n = packing.n
    cdef const long *start = &packing.start[0]
    cdef const int *cnt = &packing.cnt[0]
    cdef const int *gb0 = &packing.gb0[0]
    cdef const floating[::1] zmv
    cdef floating[::1] work
    cdef const floating *zm = NULL
    cdef floating *hp = NULL
    cdef floating keep = <floating>packing.keep
    cdef long gw = 0
    dtype = np.float32 if floating is float else np.float64
    if packing.zoned:
        if packing.zoneout is not None:
            zmv = packing.zoneout
            zm = &zmv[0]
        gw = <long>packing.widest * p.H
        work = np.empty(n * gw, dtype)
        hp = &work[0]
    with nogil:
        p.zt0 = 0
        p.X = <void *>chunk_rows(0, 1, p.B, p.In, <const floating *>p.x, p.sxt, p.sxb,
                                 <floating *>p.stage)
        project_chunk_rows(p, p.B, <floating *>p.Z)
        if n == 1:
            packed_forward_group(p, T, 1, 0, start, cnt, gb0[0], zm, keep, hp, scratch)
        else:
            for k in prange(n, num_threads=n, schedule="static"):
                packed_forward_group(p, T, n, <int>k, start, cnt, gb0[k], zm, keep,
                                     hp + k * gw if hp != NULL else NULL,
                                     scratch + k * p.scratch)
    return 0


cdef inline void zoneout_split(long nrows, long H, const floating *dy, long dyr,
                               const floating *zm, floating keep, floating *dh,
                               floating *carry) noexcept nogil:
    """g = dh + dy (dy rows dyr apart, or NULL); carry = (1 - m) g, dh = m g."""
    cdef long b, j
    cdef floating g, m = keep
    for b in range(nrows):
        for j in range(H):
            g = dh[b * H + j] + (dy[b * dyr + j] if dy != NULL else 0)
            if zm != NULL:
                m = zm[b * H + j]
            carry[b * H + j] = (1 - m) * g
            dh[b * H + j] = m * g


cdef void packed_backward_group(const Bwd *q, long T, int n, int k, const long *start,
                                const int *cnt, int b0, const floating *zm, floating keep,
                                floating *carry, floating *acc,
                                floating *scratch) noexcept nogil:
    """Group k's backward time loop: each step on its running rows; dh (dc) of a row that
    does not run at a step stays as it is. The LSTM reads c_{t-1} from the saved states of
    the step before, or from c0 for a row whose first step this is (go_backwards). carry
    (zoneout only, else NULL): the group's share of dh_t that goes straight to h_{t-1}."""
    cdef Bwd v = q[0]
    cdef long H = q.H, s, t, tp, r, rp, sz = sizeof(floating), i
    cdef int c, cp
    cdef void *c0 = moved(q.c0, sz, b0 * H)
    v.T, v.go_backwards, v.mask, v.dout = 1, False, NULL, NULL
    v.dh = moved(q.dh, sz, b0 * H)
    v.dhp = moved(q.dhp, sz, b0 * H)
    v.dc = moved(q.dc, sz, b0 * H)
    v.rdrop = moved(q.rdrop, sz, b0 * H)
    v.drh = moved(q.drh, sz, b0 * H)
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if q.go_backwards else s
        c = cnt[t * n + k]
        if c == 0:
            continue
        r = start[t * n + k]
        v.Z = moved(q.Z, sz, r * q.ZW)
        v.C = moved(q.C, sz, r * H)
        v.HIN = moved(q.HIN, sz, r * H)
        v.HPREV = moved(q.HPREV, sz, r * H)
        v.RH = moved(q.RH, sz, r * H)
        v.ln.RN = moved(q.ln.RN, sz, r * q.G)
        v.ln.RS = moved(q.ln.RS, sz, r)
        v.ln.CN = moved(q.ln.CN, sz, r * H)
        v.ln.CS = moved(q.ln.CS, sz, r)
        v.DY = moved(q.DY, sz, r * q.dyr)
        if carry != NULL:
            zoneout_split(c, H, <const floating *>v.DY, q.dyr if q.dyr else H,
                          zm + r * H if zm != NULL else NULL, keep, <floating *>v.dh, carry)
            v.DY = NULL
        if q.C == NULL:
            backward_rows(&v, 0, c, acc, scratch)
            if carry != NULL:
                for i in range(c * H):
                    (<floating *>v.dh)[i] += carry[i]
            continue
        cp, rp = 0, 0
        if s > 0:
            tp = t + 1 if q.go_backwards else t - 1
            cp, rp = min(c, cnt[tp * n + k]), start[tp * n + k]
        if cp > 0:
            v.c0 = moved(q.C, sz, rp * H)
            backward_rows(&v, 0, cp, acc, scratch)
        if c > cp:
            v.c0 = c0
            backward_rows(&v, cp, c - cp, acc, scratch)
        if carry != NULL:
            for i in range(c * H):
                (<floating *>v.dh)[i] += carry[i]


cdef int packed_backward(const Bwd *q, Packed packing, floating *part,
                         floating *scratch) except -1:
    """Every group's backward time loop (its own accumulator of part), then the many-row
    products over the N packed rows."""
    cdef long k, T = packing.T
    cdef int n = packing.n
    cdef const long *start = &packing.start[0]
    cdef const int *cnt = &packing.cnt[0]
    cdef const int *gb0 = &packing.gb0[0]
    cdef const floating[::1] zmv
    cdef floating[::1] work
    cdef const floating *zm = NULL
    cdef floating *carry = NULL
    cdef floating keep = <floating>packing.keep
    cdef long gw = 0
    dtype = np.float32 if floating is float else np.float64
    if packing.zoned:
        if packing.zoneout is not None:
            zmv = packing.zoneout
            zm = &zmv[0]
        gw = <long>packing.widest * q.H
        work = np.empty(n * gw, dtype)
        carry = &work[0]
    with nogil:
        if n == 1:
            packed_backward_group(q, T, 1, 0, start, cnt, gb0[0], zm, keep, carry, part,
                                  scratch)
        else:
            for k in prange(n, num_threads=n, schedule="static"):
                packed_backward_group(q, T, n, <int>k, start, cnt, gb0[k], zm, keep,
                                      carry + k * gw if carry != NULL else NULL,
                                      part + k * q.acc if q.acc else NULL,
                                      scratch + k * q.scratch)
        param_grads(q, <floating *>q.Z)
    return 0
