/* The kernels of one (ISA, dtype): gates.c includes this once per pair, with REAL, S (dtype
 * suffix _f/_d), V (ISA suffix), FL_VBYTES (vector width) and FL_TARGET (function
 * attribute) defined; it undefines REAL and S after. */
#include "layer_norm_impl.h"
#include "gates_impl.h"
#include "matmul_impl.h"
#include "gru_impl.h"
#include "simple_rnn_impl.h"
#undef REAL
#undef S
