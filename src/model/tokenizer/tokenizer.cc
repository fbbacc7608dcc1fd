#include "model/tokenizer/tokenizer.h"

#include "model/tokenizer/vocab.h"

namespace qattn::model {

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string text;
  int32_t previous = -1;
  for (int32_t id : ids) {
    text += DecodeToken(id, previous);
    previous = id;
  }
  return text;
}

namespace tok {

std::unique_ptr<Tokenizer> MakeTokenizer(VocabSpec spec) {
  ValidateVocabSpec(spec);
  if (spec.model == "llama") return MakeSpmTokenizer(spec);
  return MakeBpeTokenizer(spec);
}

}  // namespace tok

std::unique_ptr<Tokenizer> LoadTokenizer(const GgufFile& file) {
  tok::VocabSpec spec = tok::ReadVocabSpec(file);  // its messages name the file already
  try {
    return tok::MakeTokenizer(std::move(spec));
  } catch (const ModelFileError& e) {
    throw ModelFileError(file.name() + ": " + e.what());
  }
}

}  // namespace qattn::model
