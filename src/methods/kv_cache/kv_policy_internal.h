// Factories of the KV policies that live in their own files (the registry is in kv_policy.cc).
#pragma once
#include <memory>

#include "methods/kv_cache/kv_policy.h"
#include "methods/sparse_prefill/sparse_method.h"

namespace qattn::kv {

std::unique_ptr<KvPolicy> MakeRekvPolicy(sparse::MethodOptions& options);
std::unique_ptr<KvPolicy> MakePromptDistillPolicy(sparse::MethodOptions& options);

}  // namespace qattn::kv
