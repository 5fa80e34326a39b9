// The heads' CPU kernels, built by heads/speed/kernels.py. Two parts:
//
// 1. The grouped hierarchical softmax (heads/hierarchical.py). A batch's examples fall into U of
// the K groups; each group's class rows are one contiguous run of the (C, d) weight. Per group
// present, these stream its rows once and compute every one of its examples against each row
// while the row is in L1: the logits (forward), and in one pass the input gradient, the row's
// weight gradient and its bias gradient (backward). Batched matmuls do the same multiply-adds,
// but with a handful of examples per group (B = 256 over ~170 groups at C = 1e5) the BLAS packs
// each weight block before using it, and the batch must be padded by group and the blocks
// gathered: 55 ms against 11 ms for forward + backward at C = 1e5, d = 512 on the 2-core dev
// machine, where reading the touched rows once takes ~3 ms. The inner loops are compiled for
// x86-64-v4 (AVX-512), v3 (AVX2 + FMA) and the baseline, picked at load time by the CPU (GCC
// function multiversioning), so one cached build runs on every machine of a cluster. Groups are
// split between the threads (at::parallel_for, PyTorch's OpenMP); an example belongs to one
// group, so its input gradient is written by one thread.
//
// 2. `over_runs`: the lazy optimizer's update of many runs of rows (heads/speed/sparse.py) in one
// parallel region, each thread calling back into Python for its share of the runs. Inside the
// region PyTorch runs every kernel on its calling thread (at::in_parallel_region), so each run's
// update is PyTorch's own fused kernel on one thread, where one kernel per run from Python
// wakes the other threads once per run (226 runs of 2 MB: 40 against 46 ms).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <exception>
#include <vector>

namespace {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HS_CLONES
#endif

using at::Tensor;

// Work (weight values streamed) up to which a call runs on the calling thread: waking the other
// OpenMP threads costs more than they save on a few hundred KB (heads/speed/sparse.py's SMALL).
constexpr int64_t kSerialBelow = int64_t(1) << 19;

// logits[ex[i], j] = x[ex[i]] . w[j] + bias[j] for the `rows` rows of one group and its n examples.
HS_CLONES void group_logits(const float* w, const float* bias, int64_t rows, const float* x, const int64_t* ex,
                            int64_t n, int64_t d, float* out, int64_t width) {
  for (int64_t j = 0; j < rows; ++j) {
    const float* wj = w + j * d;
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + ex[i] * d;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < d; ++k) s += xi[k] * wj[k];
      out[ex[i] * width + j] = s + bias[j];
    }
  }
}

// One pass over a group's rows: dw[j] = sum_i g[ex[i], j] x[ex[i]], db[j] = sum_i g[ex[i], j],
// dx[ex[i]] += g[ex[i], j] w[j].
HS_CLONES void group_backward(const float* w, int64_t rows, const float* x, const float* g, const int64_t* ex,
                              int64_t n, int64_t d, int64_t width, float* dw, float* db, float* dx) {
  for (int64_t j = 0; j < rows; ++j) {
    const float* wj = w + j * d;
    float* dwj = dw + j * d;
    float sb = 0.f;
    for (int64_t k = 0; k < d; ++k) dwj[k] = 0.f;
    for (int64_t i = 0; i < n; ++i) {
      const float gij = g[ex[i] * width + j];
      sb += gij;
      const float* xi = x + ex[i] * d;
      float* dxi = dx + ex[i] * d;
#pragma omp simd
      for (int64_t k = 0; k < d; ++k) {
        dwj[k] += gij * xi[k];
        dxi[k] += gij * wj[k];
      }
    }
    db[j] = sb;
  }
}

void check(const Tensor& t, at::ScalarType type, int64_t dim, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == type && t.dim() == dim && t.is_contiguous(), name,
              ": expected a contiguous ", dim, "-d CPU tensor of ", type);
}

// The groups present, in ascending order, each group's examples, and the rows they hold.
struct Plan {
  const int64_t *present, *begin, *order, *offset, *size;
  int64_t groups;
  std::vector<int64_t> first_row;  // each present group's first row among the rows of all present groups

  Plan(const Tensor& present_, const Tensor& begin_, const Tensor& order_, const Tensor& offset_, const Tensor& size_) {
    for (auto* t : {&present_, &begin_, &order_, &offset_, &size_}) check(*t, at::kLong, 1, "plan");
    present = present_.data_ptr<int64_t>(), begin = begin_.data_ptr<int64_t>(), order = order_.data_ptr<int64_t>();
    offset = offset_.data_ptr<int64_t>(), size = size_.data_ptr<int64_t>(), groups = present_.numel();
    first_row.assign(groups + 1, 0);
    for (int64_t u = 0; u < groups; ++u) first_row[u + 1] = first_row[u] + size[present[u]];
  }
  int64_t rows() const { return first_row[groups]; }
  int64_t grain(int64_t d) const { return rows() * d <= kSerialBelow ? groups : 1; }  // 1: split the groups
};
}  // namespace

// Examples sorted by group (a counting sort): the present groups (U,) ascending, where each one's
// examples start in `order` (U + 1,), and `order` (B,), the example ids group by group.
std::vector<Tensor> plan(const Tensor& group, int64_t num_groups) {
  check(group, at::kLong, 1, "group");
  const int64_t n = group.numel();
  const int64_t* g = group.data_ptr<int64_t>();
  std::vector<int64_t> count(num_groups, 0), slot(num_groups, -1), present, begin{0};
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(g[i] >= 0 && g[i] < num_groups, "group id ", g[i], " is not in [0, ", num_groups, ")");
    ++count[g[i]];
  }
  for (int64_t k = 0; k < num_groups; ++k) {
    if (count[k] == 0) continue;
    slot[k] = int64_t(present.size());
    present.push_back(k);
    begin.push_back(begin.back() + count[k]);
  }
  auto order = torch::empty({n}, group.options());
  std::vector<int64_t> next(begin.begin(), begin.end() - 1);
  int64_t* o = order.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) o[next[slot[g[i]]]++] = i;
  return {torch::tensor(present, group.options()), torch::tensor(begin, group.options()), order};
}

// (B, width) logits of each example over its group's rows; zeros past the group's size.
Tensor logits(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& offset, const Tensor& size,
              const Tensor& present, const Tensor& begin, const Tensor& order, int64_t width) {
  check(x, at::kFloat, 2, "x"), check(weight, at::kFloat, 2, "weight"), check(bias, at::kFloat, 1, "bias");
  const Plan p(present, begin, order, offset, size);
  const int64_t d = x.size(1);
  TORCH_CHECK(weight.size(1) == d, "weight has ", weight.size(1), " columns, x has ", d);
  auto out = torch::zeros({x.size(0), width}, x.options());
  const float *xs = x.data_ptr<float>(), *w = weight.data_ptr<float>(), *b = bias.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, p.groups, p.grain(d), [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t k = p.present[u], first = p.begin[u];
      group_logits(w + p.offset[k] * d, b + p.offset[k], p.size[k], xs, p.order + first, p.begin[u + 1] - first, d,
                   o, width);
    }
  });
  return out;
}

// The gradients of `logits` for the upstream gradient `grad` (B, width): the input's (B, d), and
// the weight's (R, d) and bias's (R,) for the R rows of the present groups, with those row ids
// (ascending: groups ascending, each group's rows contiguous).
std::vector<Tensor> backward(const Tensor& grad, const Tensor& x, const Tensor& weight, const Tensor& offset,
                             const Tensor& size, const Tensor& present, const Tensor& begin, const Tensor& order) {
  check(grad, at::kFloat, 2, "grad"), check(x, at::kFloat, 2, "x"), check(weight, at::kFloat, 2, "weight");
  const Plan p(present, begin, order, offset, size);
  const int64_t d = x.size(1), width = grad.size(1);
  auto dx = torch::zeros_like(x);
  auto dw = torch::empty({p.rows(), d}, x.options());
  auto db = torch::empty({p.rows()}, x.options());
  auto rows = torch::empty({p.rows()}, offset.options());
  const float *xs = x.data_ptr<float>(), *w = weight.data_ptr<float>(), *g = grad.data_ptr<float>();
  float *dxs = dx.data_ptr<float>(), *dws = dw.data_ptr<float>(), *dbs = db.data_ptr<float>();
  int64_t* r = rows.data_ptr<int64_t>();
  at::parallel_for(0, p.groups, p.grain(d), [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t k = p.present[u], first = p.begin[u], row = p.first_row[u];
      for (int64_t j = 0; j < p.size[k]; ++j) r[row + j] = p.offset[k] + j;
      group_backward(w + p.offset[k] * d, p.size[k], xs, g, p.order + first, p.begin[u + 1] - first, d, width,
                     dws + row * d, dbs + row, dxs);
    }
  });
  return {dx, dw, db, rows};
}

// fn(bounds[c], bounds[c + 1]) for each share c of the runs, the shares split between the
// threads of one parallel region. Every thread takes the caller's thread-local state (grad mode,
// autocast) and the GIL only while in Python; PyTorch's kernels release it. The first exception
// is raised on the calling thread once every share has run.
void over_runs(const pybind11::function& fn, const std::vector<int64_t>& bounds) {
  const int64_t shares = int64_t(bounds.size()) - 1;
  const at::ThreadLocalState state;
  std::exception_ptr error;
  {
    pybind11::gil_scoped_release release;
    at::parallel_for(0, shares, 1, [&](int64_t c0, int64_t c1) {
      at::ThreadLocalStateGuard guard(state);
      pybind11::gil_scoped_acquire acquire;
      for (int64_t c = c0; c < c1; ++c) {
        try {
          fn(bounds[c], bounds[c + 1]);
        } catch (...) {
          if (!error) error = std::current_exception();  // under the GIL: one thread at a time
        }
      }
    });
  }
  if (error) std::rethrow_exception(error);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("plan", &plan, "examples sorted by group: present groups, their starts, the order");
  m.def("logits", &logits, "each example's logits over its group's rows");
  m.def("backward", &backward, "input, weight-row and bias-row gradients of logits");
  m.def("over_runs", &over_runs, "fn(lo, hi) for shares of runs, one parallel region");
}
