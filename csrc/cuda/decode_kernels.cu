// Launchers and instantiations of the decode attention kernels (csrc/cuda/attention_decode.cuh). No torch headers.
#include "attention_decode.cuh"

namespace lmx::cuda {

int decode_partition_size(const PagedAttentionArgs& a, int partition_size) {
  (void)a;
  const int p = partition_size > 0 ? partition_size : kDecodeDefaultPartition;
  return static_cast<int>(ceil_div(p, kDecodeTile) * kDecodeTile);
}

int decode_num_splits(const PagedAttentionArgs& a, int partition_size) {
  const int64_t capacity = static_cast<int64_t>(a.max_blocks_per_seq) * a.block_size;
  const int64_t p = decode_partition_size(a, partition_size);
  return static_cast<int>(imax<int64_t>(1, imin<int64_t>(65535, ceil_div(capacity, p))));
}

size_t decode_workspace_bytes(const PagedAttentionArgs& a, int partition_size) {
  const int splits = decode_num_splits(a, partition_size);
  if (splits == 1) return 0;
  const size_t rows = static_cast<size_t>(a.num_tokens) * a.num_q_heads * splits;
  return rows * (a.head_dim + 2) * sizeof(float);
}

template <typename T, typename C, int HEADS>
static void launch_decode(const PagedAttentionArgs& a, HeadsView<T> out, HeadsView<const T> query, KvCache<C> kv,
                          void* workspace, int partition, int splits, cudaStream_t stream) {
  const int group = a.num_q_heads / a.num_kv_heads;
  const int chunks = (group + HEADS - 1) / HEADS;
  float* part_out = static_cast<float*>(workspace);
  float* part_ml = splits > 1 ? part_out + static_cast<size_t>(a.num_tokens) * a.num_q_heads * splits * a.head_dim
                              : nullptr;
  const dim3 grid(static_cast<unsigned>(a.num_tokens), a.num_kv_heads * chunks, splits);
  const size_t smem = decode_smem_floats(HEADS, a.head_dim, kDecodeVecWidth<C>) * sizeof(float);
  LMX_LAUNCH((paged_attention_decode_kernel<T, C, HEADS>), grid, dim3(kDecodeThreads), smem, stream, a, out, query,
             kv, part_out, part_ml, partition, splits);
  if (splits > 1)
    LMX_LAUNCH(paged_attention_merge_kernel<T>, dim3(static_cast<unsigned>(a.num_tokens), a.num_q_heads),
               dim3(kMergeThreads), 0, stream, a, out, part_out, part_ml, splits);
}

template <typename T, typename C>
void launch_paged_attention_decode(const PagedAttentionArgs& a, HeadsView<T> out, HeadsView<const T> query,
                                   KvCache<C> kv, void* workspace, int partition_size, cudaStream_t stream) {
  if (a.num_tokens == 0 || a.num_seqs == 0) return;
  const int partition = decode_partition_size(a, partition_size);
  const int splits = decode_num_splits(a, partition_size);
  const int group = a.num_q_heads / a.num_kv_heads;
  // Query heads per block: all heads of the KV head up to 8 (each K/V load serves them all).
  if (group >= 8) launch_decode<T, C, 8>(a, out, query, kv, workspace, partition, splits, stream);
  else if (group >= 4) launch_decode<T, C, 4>(a, out, query, kv, workspace, partition, splits, stream);
  else if (group >= 2) launch_decode<T, C, 2>(a, out, query, kv, workspace, partition, splits, stream);
  else launch_decode<T, C, 1>(a, out, query, kv, workspace, partition, splits, stream);
}

// Every activation type with its own cache type and with the int8 / fp8 caches.
#define LMX_INSTANTIATE_DECODE(T, C)                                                                               \
  template void launch_paged_attention_decode<T, C>(const PagedAttentionArgs&, HeadsView<T>, HeadsView<const T>, \
                                                    KvCache<C>, void*, int, cudaStream_t);
#define LMX_INSTANTIATE_DECODE_ALL(T) \
  LMX_INSTANTIATE_DECODE(T, T)        \
  LMX_INSTANTIATE_DECODE(T, int8_t)   \
  LMX_INSTANTIATE_DECODE(T, fp8_e4m3)
LMX_INSTANTIATE_DECODE_ALL(float)
LMX_INSTANTIATE_DECODE_ALL(__half)
LMX_INSTANTIATE_DECODE_ALL(__nv_bfloat16)

}  // namespace lmx::cuda
