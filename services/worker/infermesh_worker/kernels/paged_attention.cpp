// Paged attention on CPU that reads K/V in place through the block tables.
//
// One call per layer covers every token of the step (prefill chunks and decodes alike): token t
// belongs to sequence seq_of_token[t] and sees keys [max(0, ctx - window), ctx) of that sequence,
// ctx = context_lens[t] (its position + 1). Work is split over (token, KV head) pairs; each pair
// serves the query heads that share that KV head (GQA), so every key row is read once per pair.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

template <typename scalar_t>
void attend(const scalar_t* __restrict q, const scalar_t* __restrict k_cache,
            const scalar_t* __restrict v_cache, const int64_t* __restrict tables,
            const int64_t* __restrict seq_of_token, const int64_t* __restrict context_lens,
            scalar_t* __restrict out, int64_t num_tokens, int64_t num_heads, int64_t num_kv_heads,
            int64_t head_dim, int64_t block_size, int64_t table_stride, int64_t window,
            float scale) {
  const int64_t group = num_heads / num_kv_heads;
  const int64_t slot_stride = num_kv_heads * head_dim;
  at::parallel_for(0, num_tokens * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<float> qf(group * head_dim);
    std::vector<float> acc(group * head_dim);
    std::vector<float> kf(head_dim);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / num_kv_heads;
      const int64_t g = item % num_kv_heads;
      const int64_t ctx = context_lens[t];
      const int64_t first = window > 0 ? std::max<int64_t>(0, ctx - window) : 0;
      const int64_t n = ctx - first;
      const int64_t* table = tables + seq_of_token[t] * table_stride;
      for (int64_t r = 0; r < group; ++r) {
        const scalar_t* qrow = q + (t * num_heads + g * group + r) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) qf[r * head_dim + d] = static_cast<float>(qrow[d]) * scale;
      }
      scores.resize(group * n);
      std::vector<float> maxima(group, -std::numeric_limits<float>::infinity());
      for (int64_t j = 0; j < n; ++j) {
        const int64_t pos = first + j;
        const int64_t slot = table[pos / block_size] * block_size + pos % block_size;
        const scalar_t* krow = k_cache + slot * slot_stride + g * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) kf[d] = static_cast<float>(krow[d]);
        for (int64_t r = 0; r < group; ++r) {
          const float* qr = qf.data() + r * head_dim;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < head_dim; ++d) dot += qr[d] * kf[d];
          scores[r * n + j] = dot;
          maxima[r] = std::max(maxima[r], dot);
        }
      }
      std::vector<float> sums(group, 0.f);
      for (int64_t r = 0; r < group; ++r) {
        float* s = scores.data() + r * n;
        float total = 0.f;
        for (int64_t j = 0; j < n; ++j) {
          s[j] = std::exp(s[j] - maxima[r]);
          total += s[j];
        }
        sums[r] = total;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t pos = first + j;
        const int64_t slot = table[pos / block_size] * block_size + pos % block_size;
        const scalar_t* vrow = v_cache + slot * slot_stride + g * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) kf[d] = static_cast<float>(vrow[d]);
        for (int64_t r = 0; r < group; ++r) {
          const float p = scores[r * n + j];
          float* a = acc.data() + r * head_dim;
#pragma omp simd
          for (int64_t d = 0; d < head_dim; ++d) a[d] += p * kf[d];
        }
      }
      for (int64_t r = 0; r < group; ++r) {
        scalar_t* orow = out + (t * num_heads + g * group + r) * head_dim;
        const float inv = 1.f / sums[r];
        for (int64_t d = 0; d < head_dim; ++d) orow[d] = static_cast<scalar_t>(acc[r * head_dim + d] * inv);
      }
    }
  });
}

// q [T, H, D]; k_cache, v_cache [num_blocks, block_size, KV, D]; block_tables [B, max_blocks];
// seq_of_token, context_lens [T] (int64). Returns [T, H, D].
torch::Tensor paged_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                              torch::Tensor block_tables, torch::Tensor seq_of_token,
                              torch::Tensor context_lens, int64_t window, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.dim() == 4, "bad ranks");
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "q and the caches must be contiguous");
  TORCH_CHECK(k_cache.scalar_type() == q.scalar_type() && v_cache.scalar_type() == q.scalar_type(),
              "q and the caches must share a dtype");
  TORCH_CHECK(block_tables.scalar_type() == torch::kLong && seq_of_token.scalar_type() == torch::kLong &&
                  context_lens.scalar_type() == torch::kLong,
              "index tensors must be int64");
  auto tables = block_tables.contiguous();
  auto seqs = seq_of_token.contiguous();
  auto lens = context_lens.contiguous();
  const int64_t num_tokens = q.size(0), num_heads = q.size(1), head_dim = q.size(2);
  const int64_t block_size = k_cache.size(1), num_kv_heads = k_cache.size(2);
  TORCH_CHECK(num_heads % num_kv_heads == 0 && k_cache.size(3) == head_dim, "head shapes disagree");
  TORCH_CHECK(seqs.size(0) == num_tokens && lens.size(0) == num_tokens, "one entry per token");
  // A wrong index would read outside the cache: check them all before any work (O(tables)).
  const int64_t num_blocks = k_cache.size(0), table_stride = tables.size(1);
  const int64_t* tp = tables.data_ptr<int64_t>();
  for (int64_t i = 0; i < tables.numel(); ++i)
    TORCH_CHECK(tp[i] >= 0 && tp[i] < num_blocks, "block id ", tp[i], " outside the cache");
  const int64_t* sp = seqs.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  for (int64_t t = 0; t < num_tokens; ++t) {
    TORCH_CHECK(sp[t] >= 0 && sp[t] < tables.size(0), "token ", t, " names no block table");
    TORCH_CHECK(lp[t] >= 1 && lp[t] <= table_stride * block_size, "token ", t, " context outside its table");
  }
  auto out = torch::empty_like(q);
  if (num_tokens == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_attention", [&] {
    attend<scalar_t>(q.data_ptr<scalar_t>(), k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(),
                     tables.data_ptr<int64_t>(), seqs.data_ptr<int64_t>(), lens.data_ptr<int64_t>(),
                     out.data_ptr<scalar_t>(), num_tokens, num_heads, num_kv_heads, head_dim, block_size,
                     table_stride, window, static_cast<float>(scale));
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_attention", &paged_attention, "paged attention through block tables (CPU)");
}
