#include "torch_checkpoint.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <limits>
#include <new>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "atomic_file.h"
#include "errors.h"

namespace semicap {

namespace {

// Bounds on what a checkpoint may ask of the reader (far above what torch.save writes for any real model).
constexpr uint64_t kMaxZipEntries = 1u << 20;
constexpr size_t kMaxEntryName = 4096;
constexpr size_t kMaxObjects = 1u << 21;   // pickle objects created (each costs ~200 bytes)
constexpr size_t kMaxStack = 1u << 20;     // pickle stack entries
constexpr size_t kMaxMarks = 10000;        // MARK nesting
constexpr int kMaxDictDepth = 64;          // nested dicts when flattening
constexpr size_t kMaxFlattenVisits = 1u << 18;  // entries met while flattening (shared sub-dicts count again)
constexpr size_t kMaxMetadata = 4096;           // non-tensor leaves listed in metadata (the rest are skipped)
constexpr size_t kMaxNameLength = 1u << 16;
constexpr size_t kMaxDims = 64;
constexpr size_t kMaxGlobalPart = 256;

[[noreturn]] void bad(const std::string& what, const std::string& why) { fail("E_CHECKPOINT", what + ": " + why); }

uint16_t rd16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t rd32(const uint8_t* p) { return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24); }
uint64_t rd64(const uint8_t* p) { return static_cast<uint64_t>(rd32(p)) | (static_cast<uint64_t>(rd32(p + 4)) << 32); }

std::string printable(const std::string& s, size_t max = 80) {
  std::string o;
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) o += static_cast<char>(c);
    else { char buf[8]; std::snprintf(buf, sizeof buf, "\\x%02x", c); o += buf; }
  }
  if (s.size() > max) o += "...";
  return o;
}

// Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF): names reach JS, where invalid bytes would collapse.
bool valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c < 0x80) { ++i; continue; }
    const int extra = (c >= 0xC2 && c <= 0xDF) ? 1 : (c >= 0xE0 && c <= 0xEF) ? 2 : (c >= 0xF0 && c <= 0xF4) ? 3 : -1;
    if (extra < 0 || n - i - 1 < static_cast<size_t>(extra)) return false;
    uint32_t cp = c & (0x3F >> extra);
    for (int k = 1; k <= extra; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if ((extra == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF))) return false;
    i += 1 + static_cast<size_t>(extra);
  }
  return true;
}

// ------------------------------------------------------------------------------------------------ zip container

struct ZipRecord {
  std::string name;
  uint64_t header_offset = 0, data_offset = 0, size = 0;
};

std::map<std::string, ZipRecord> read_zip(const uint8_t* b, size_t n, const std::string& what) {
  if (n < 22) bad(what, "not a zip archive (" + std::to_string(n) + " bytes, too short for the end of central directory record): truncated?");
  // The end of central directory record: the last 22 bytes, or earlier when the archive carries a comment.
  size_t eocd = SIZE_MAX;
  const size_t lowest = n - 22 > 65535 ? n - 22 - 65535 : 0;
  for (size_t i = n - 22 + 1; i-- > lowest;) {
    if (rd32(b + i) == 0x06054b50 && i + 22 + rd16(b + i + 20) <= n) { eocd = i; break; }
  }
  if (eocd == SIZE_MAX) bad(what, "no zip end of central directory record: truncated, or not a torch.save zip");
  uint64_t disk = rd16(b + eocd + 4), cd_disk = rd16(b + eocd + 6);
  uint64_t entries = rd16(b + eocd + 10), cd_size = rd32(b + eocd + 12), cd_off = rd32(b + eocd + 16);
  uint64_t cd_limit = eocd;  // the central directory ends before the records that follow it
  const bool wants64 = entries == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_off == 0xFFFFFFFFu;
  if (eocd >= 20 && rd32(b + eocd - 20) == 0x07064b50) {
    // zip64: the locator points at the zip64 end of central directory record.
    const uint8_t* loc = b + eocd - 20;
    uint64_t rec = rd64(loc + 8);
    if (rd32(loc + 4) != 0 || rd32(loc + 16) > 1) bad(what, "a multi-disk zip archive is not a torch.save checkpoint");
    if (rec > eocd - 20 || eocd - 20 - rec < 56) bad(what, "zip64 end of central directory record at " + std::to_string(rec) + " lies outside the file");
    const uint8_t* r = b + rec;
    if (rd32(r) != 0x06064b50) bad(what, "zip64 end of central directory locator points at no zip64 record");
    disk = rd32(r + 16);
    cd_disk = rd32(r + 20);
    entries = rd64(r + 32);
    cd_size = rd64(r + 40);
    cd_off = rd64(r + 48);
    cd_limit = rec;
  } else if (wants64) {
    bad(what, "zip end of central directory asks for zip64 values but the zip64 locator is missing");
  }
  if (disk != 0 || cd_disk != 0) bad(what, "a multi-disk zip archive is not a torch.save checkpoint");
  if (entries > kMaxZipEntries) bad(what, "zip archive lists " + std::to_string(entries) + " records (at most " + std::to_string(kMaxZipEntries) + ")");
  if (cd_off > cd_limit || cd_size > cd_limit - cd_off)
    bad(what, "zip central directory (offset " + std::to_string(cd_off) + ", " + std::to_string(cd_size) + " bytes) runs past the end of the file: truncated?");
  if (entries * 46 > cd_size) bad(what, "zip central directory (" + std::to_string(cd_size) + " bytes) is too small for " + std::to_string(entries) + " records");

  std::map<std::string, ZipRecord> out;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [begin, end) of every local header + data, and the directory
  ranges.emplace_back(cd_off, cd_off + cd_size);
  uint64_t p = cd_off;
  const uint64_t cd_end = cd_off + cd_size;
  for (uint64_t k = 0; k < entries; ++k) {
    if (cd_end - p < 46 || rd32(b + p) != 0x02014b50) bad(what, "zip central directory record " + std::to_string(k) + " is damaged");
    const uint8_t* c = b + p;
    const uint16_t flags = rd16(c + 8), method = rd16(c + 10);
    uint64_t csize = rd32(c + 20), usize = rd32(c + 24), lho = rd32(c + 42);
    const uint16_t nlen = rd16(c + 28), xlen = rd16(c + 30), clen = rd16(c + 32);
    uint64_t start_disk = rd16(c + 34);
    if (cd_end - p - 46 < static_cast<uint64_t>(nlen) + xlen + clen) bad(what, "zip central directory record " + std::to_string(k) + " runs past the directory");
    if (nlen == 0 || nlen > kMaxEntryName) bad(what, "zip record " + std::to_string(k) + " has a name of " + std::to_string(nlen) + " bytes");
    std::string name(reinterpret_cast<const char*>(c + 46), nlen);
    // zip64 extended information: the 8-byte values replace the 0xFFFFFFFF markers, in this order.
    const uint8_t* x = c + 46 + nlen;
    for (size_t q = 0; q + 4 <= xlen;) {
      const uint16_t id = rd16(x + q), len = rd16(x + q + 2);
      if (q + 4 + len > xlen) bad(what, "zip record '" + printable(name) + "' has a damaged extra field");
      if (id == 0x0001) {
        const uint8_t* f = x + q + 4;
        size_t used = 0;
        auto take = [&](uint64_t* v) {
          if (used + 8 > len) bad(what, "zip record '" + printable(name) + "' has a short zip64 extra field");
          *v = rd64(f + used);
          used += 8;
        };
        if (usize == 0xFFFFFFFFu) take(&usize);
        if (csize == 0xFFFFFFFFu) take(&csize);
        if (lho == 0xFFFFFFFFu) take(&lho);
        if (start_disk == 0xFFFF) {
          if (used + 4 > len) bad(what, "zip record '" + printable(name) + "' has a short zip64 extra field");
          start_disk = rd32(f + used);
        }
      }
      q += 4u + len;
    }
    if (usize == 0xFFFFFFFFu || csize == 0xFFFFFFFFu || lho == 0xFFFFFFFFu)
      bad(what, "zip record '" + printable(name) + "' needs a zip64 extra field it does not have");
    if (start_disk != 0) bad(what, "a multi-disk zip archive is not a torch.save checkpoint");
    if (flags & 1) bad(what, "encrypted zip record '" + printable(name) + "'");
    if (method != 0)
      bad(what, "compressed record '" + printable(name) + "' (zip method " + std::to_string(method) +
                    "): torch.save never compresses; re-save with torch.save");
    if (csize != usize) bad(what, "stored zip record '" + printable(name) + "' has different compressed and uncompressed sizes");
    if (lho > n || n - lho < 30 || rd32(b + lho) != 0x04034b50)
      bad(what, "zip record '" + printable(name) + "': local header at " + std::to_string(lho) + " is missing or past the end of the file: truncated?");
    const uint8_t* l = b + lho;
    const uint64_t lnlen = rd16(l + 26), lxlen = rd16(l + 28);
    const uint64_t data = lho + 30 + lnlen + lxlen;
    if (data > n) bad(what, "zip record '" + printable(name) + "': local header runs past the end of the file: truncated?");
    if (lnlen != nlen || std::memcmp(l + 30, c + 46, nlen) != 0) bad(what, "zip record '" + printable(name) + "': local header names another file");
    if (rd16(l + 8) != 0) bad(what, "compressed record '" + printable(name) + "' (local header): torch.save never compresses; re-save with torch.save");
    if (usize > n - data)
      bad(what, "zip record '" + printable(name) + "' (" + std::to_string(usize) + " bytes at " + std::to_string(data) + ") runs past the end of the file (" + std::to_string(n) + " bytes): truncated?");
    if (!out.emplace(name, ZipRecord{name, lho, data, usize}).second) bad(what, "zip archive holds '" + printable(name) + "' twice");
    ranges.emplace_back(lho, data + usize);
    p += 46u + nlen + xlen + clen;
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second)
      bad(what, "overlapping zip records (bytes " + std::to_string(ranges[i].first) + ".." + std::to_string(ranges[i].second) + " and " +
                    std::to_string(ranges[i - 1].first) + ".." + std::to_string(ranges[i - 1].second) + ")");
  return out;
}

// ------------------------------------------------------------------------------------------------ pickle machine

enum class Kind : uint8_t { None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Global, Storage, Tensor };
enum class G : uint8_t { OrderedDict, RebuildTensorV2, RebuildParameter, RebuildParameterWithState, StorageType };

struct Obj {
  Kind kind = Kind::None;
  G global = G::OrderedDict;
  DType dtype = DType::F32;       // StorageType, Storage, Tensor
  int64_t i = 0;                  // Int, Bool; Storage: numel; Tensor: storage offset
  double f = 0;
  std::string s;                  // Str, Bytes; Global: "module.name"; Storage: key
  std::vector<uint32_t> items;    // Tuple, List; Dict: k0, v0, k1, v1, ...
  const uint8_t* data = nullptr;  // Storage: the record's bytes
  uint64_t record_size = 0;       // Storage
  std::vector<int64_t> shape, strides;  // Tensor
  uint32_t storage = 0;           // Tensor: the Storage object
};

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None"; case Kind::Bool: return "bool"; case Kind::Int: return "int"; case Kind::Float: return "float";
    case Kind::Str: return "str"; case Kind::Bytes: return "bytes"; case Kind::Tuple: return "tuple"; case Kind::List: return "list";
    case Kind::Dict: return "dict"; case Kind::Global: return "global"; case Kind::Storage: return "storage"; case Kind::Tensor: return "tensor";
  }
  return "?";
}

bool storage_dtype(const std::string& name, DType* d) {
  static const std::pair<const char*, DType> table[] = {
      {"FloatStorage", DType::F32}, {"DoubleStorage", DType::F64}, {"HalfStorage", DType::F16}, {"BFloat16Storage", DType::BF16},
      {"LongStorage", DType::I64},  {"IntStorage", DType::I32},    {"ShortStorage", DType::I16}, {"CharStorage", DType::I8},
      {"ByteStorage", DType::U8},   {"BoolStorage", DType::BOOL}};
  for (auto& [n, t] : table)
    if (name == n) { *d = t; return true; }
  return false;
}

const char* storage_name(DType d) {
  switch (d) {
    case DType::F32: return "FloatStorage"; case DType::F64: return "DoubleStorage"; case DType::F16: return "HalfStorage";
    case DType::BF16: return "BFloat16Storage"; case DType::I64: return "LongStorage"; case DType::I32: return "IntStorage";
    case DType::I16: return "ShortStorage"; case DType::I8: return "CharStorage"; case DType::U8: return "ByteStorage";
    case DType::BOOL: return "BoolStorage";
  }
  return "?";
}

class Unpickler {
 public:
  Unpickler(const uint8_t* p, size_t n, const std::string& what, const std::string& pkl_name,
            const std::map<std::string, ZipRecord>& zip, const uint8_t* file, const std::string& root)
      : p_(p), begin_(p), end_(p + n), what_(what), pkl_(pkl_name), zip_(zip), file_(file), root_(root) {
    objs_.reserve(64);
    none_ = make(Kind::None);
    true_ = make(Kind::Bool);
    objs_[true_].i = 1;
    false_ = make(Kind::Bool);
  }

  uint32_t run();
  const Obj& obj(uint32_t id) const { return objs_[id]; }

  [[noreturn]] void err(const std::string& why) const {
    bad(what_, pkl_ + ": " + why + " (at byte " + std::to_string(pos_) + ")");
  }

 private:
  uint32_t make(Kind k) {
    if (objs_.size() >= kMaxObjects) err("more than " + std::to_string(kMaxObjects) + " pickle objects");
    objs_.emplace_back();
    objs_.back().kind = k;
    return static_cast<uint32_t>(objs_.size() - 1);
  }
  const uint8_t* need(uint64_t k) {
    if (static_cast<uint64_t>(end_ - p_) < k) err("pickle ends inside an opcode's argument (needs " + std::to_string(k) + " bytes, " + std::to_string(end_ - p_) + " left): truncated?");
    const uint8_t* q = p_;
    p_ += k;
    return q;
  }
  void push(uint32_t id) {
    if (stack_.size() >= kMaxStack) err("pickle stack deeper than " + std::to_string(kMaxStack));
    stack_.push_back(id);
  }
  uint32_t pop() {
    size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() <= floor) err("pickle stack underflow");
    uint32_t v = stack_.back();
    stack_.pop_back();
    return v;
  }
  uint32_t top() {
    size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() <= floor) err("pickle stack underflow");
    return stack_.back();
  }
  std::vector<uint32_t> pop_mark() {
    if (marks_.empty()) err("pickle opcode needs a MARK that is not there");
    size_t m = marks_.back();
    marks_.pop_back();
    std::vector<uint32_t> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  uint32_t str_obj(Kind k, uint64_t len) {
    const uint8_t* q = need(len);
    uint32_t id = make(k);
    objs_[id].s.assign(reinterpret_cast<const char*>(q), static_cast<size_t>(len));
    return id;
  }
  uint32_t int_obj(int64_t v) {
    uint32_t id = make(Kind::Int);
    objs_[id].i = v;
    return id;
  }
  std::string line() {
    std::string s;
    while (true) {
      if (p_ >= end_) err("pickle ends inside a GLOBAL name: truncated?");
      char c = static_cast<char>(*p_++);
      if (c == '\n') return s;
      if (s.size() >= kMaxGlobalPart) err("GLOBAL name longer than " + std::to_string(kMaxGlobalPart) + " bytes");
      s += c;
    }
  }
  uint32_t global(const std::string& module, const std::string& name);
  uint32_t reduce(uint32_t callable, uint32_t args);
  uint32_t persistent_load(uint32_t pid);
  void memo_put(uint64_t idx, uint32_t v) {
    if (memo_.size() >= kMaxObjects && !memo_.count(idx)) err("pickle memo larger than " + std::to_string(kMaxObjects));
    memo_[idx] = v;
  }
  uint32_t memo_get(uint64_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) err("pickle memo index " + std::to_string(idx) + " is not defined");
    return it->second;
  }
  int64_t as_int(uint32_t id, const char* what) const {
    const Obj& o = objs_[id];
    if (o.kind != Kind::Int && o.kind != Kind::Bool) err(std::string(what) + " must be an int, not a " + kind_name(o.kind));
    return o.i;
  }
  std::vector<int64_t> int_tuple(uint32_t id, const char* what) const {
    const Obj& o = objs_[id];
    if (o.kind != Kind::Tuple && o.kind != Kind::List) err(std::string(what) + " must be a tuple, not a " + kind_name(o.kind));
    if (o.items.size() > kMaxDims) err(std::string(what) + " has more than " + std::to_string(kMaxDims) + " dimensions");
    std::vector<int64_t> v;
    for (uint32_t e : o.items) {
      int64_t x = as_int(e, what);
      if (x < 0) err(std::string(what) + " holds a negative value " + std::to_string(x));
      v.push_back(x);
    }
    return v;
  }

  const uint8_t* p_;
  const uint8_t* begin_;
  const uint8_t* end_;
  size_t pos_ = 0;
  const std::string& what_;
  std::string pkl_;
  const std::map<std::string, ZipRecord>& zip_;
  const uint8_t* file_;
  const std::string& root_;
  std::vector<Obj> objs_;
  std::vector<uint32_t> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, uint32_t> memo_;
  uint32_t none_, true_, false_;
};

uint32_t Unpickler::global(const std::string& module, const std::string& name) {
  const std::string full = module + "." + name;
  uint32_t id;
  auto mk = [&](G g) {
    id = make(Kind::Global);
    objs_[id].global = g;
    objs_[id].s = full;
    return id;
  };
  if (module == "collections" && name == "OrderedDict") return mk(G::OrderedDict);
  if (module == "torch._utils" && name == "_rebuild_tensor_v2") return mk(G::RebuildTensorV2);
  if (module == "torch._utils" && name == "_rebuild_parameter") return mk(G::RebuildParameter);
  if (module == "torch._utils" && name == "_rebuild_parameter_with_state") return mk(G::RebuildParameterWithState);
  DType d;
  if (module == "torch" && storage_dtype(name, &d)) {
    mk(G::StorageType);
    objs_[id].dtype = d;
    return id;
  }
  if ((module == "torch" || module == "torch.storage") && (name == "UntypedStorage" || name == "TypedStorage" || name == "_UntypedStorage"))
    err("the pickle holds a raw " + printable(full) + ", not tensors: save a state_dict of tensors (model.state_dict())");
  if (module == "torch" && name.size() > 7 && name.compare(name.size() - 7, 7, "Storage") == 0)
    err("unsupported storage type " + printable(full) + " (supported: float32/64, float16, bfloat16, int64/32/16/8, uint8, bool)");
  err("the pickle calls global '" + printable(full) + "', which is not allowed: the file is not a plain state_dict of tensors "
      "(save model.state_dict() instead); nothing from the file was run");
}

uint32_t Unpickler::persistent_load(uint32_t pid) {
  const Obj& t = objs_[pid];
  if (t.kind != Kind::Tuple || t.items.size() != 5) err("persistent id is not a ('storage', type, key, location, numel) tuple");
  const Obj& tag = objs_[t.items[0]];
  if (tag.kind != Kind::Str || tag.s != "storage") err("persistent id of an unknown kind (not 'storage')");
  const Obj& type = objs_[t.items[1]];
  if (type.kind != Kind::Global || type.global != G::StorageType) err("persistent id names no torch storage type");
  const Obj& key = objs_[t.items[2]];
  std::string k;
  if (key.kind == Kind::Str) k = key.s;
  else if (key.kind == Kind::Int) k = std::to_string(key.i);
  else err("storage key must be a string");
  int64_t numel = as_int(t.items[4], "storage size");
  if (numel < 0) err("storage '" + printable(k) + "' has a negative size");
  const DType d = type.dtype;
  auto it = zip_.find(root_ + "/data/" + k);
  if (it == zip_.end()) err("storage record '" + printable(root_ + "/data/" + k) + "' is missing from the archive");
  const uint64_t es = dtype_size(d);
  if (static_cast<uint64_t>(numel) > it->second.size / es)
    err("storage '" + printable(k) + "' holds " + std::to_string(numel) + " " + storage_name(d) + " elements (" +
        std::to_string(numel) + " x " + std::to_string(es) + " bytes) but its record has only " + std::to_string(it->second.size) + " bytes");
  uint32_t id = make(Kind::Storage);
  Obj& o = objs_[id];
  o.dtype = d;
  o.i = numel;
  o.s = k;
  o.data = file_ + it->second.data_offset;
  o.record_size = it->second.size;
  return id;
}

uint32_t Unpickler::reduce(uint32_t callable, uint32_t args_id) {
  const Obj& c = objs_[callable];
  if (c.kind != Kind::Global) err(std::string("REDUCE on a ") + kind_name(c.kind) + ", not an allowed callable");
  if (objs_[args_id].kind != Kind::Tuple) err("REDUCE arguments are not a tuple");
  const std::vector<uint32_t> args = objs_[args_id].items;
  const std::string name = c.s;
  auto is_dict_or_none = [&](uint32_t id) { return objs_[id].kind == Kind::Dict || objs_[id].kind == Kind::None; };
  switch (c.global) {
    case G::OrderedDict:
      if (!args.empty()) err("collections.OrderedDict called with arguments (torch.save calls it with none)");
      return make(Kind::Dict);
    case G::RebuildTensorV2: {
      if (args.size() != 6 && args.size() != 7) err("_rebuild_tensor_v2 expects 6 or 7 arguments, got " + std::to_string(args.size()));
      const Obj& st = objs_[args[0]];
      if (st.kind != Kind::Storage) err("_rebuild_tensor_v2's first argument is not a storage");
      int64_t offset = as_int(args[1], "tensor storage offset");
      if (offset < 0) err("negative tensor storage offset");
      std::vector<int64_t> shape = int_tuple(args[2], "tensor size");
      std::vector<int64_t> strides = int_tuple(args[3], "tensor stride");
      if (shape.size() != strides.size()) err("tensor size and stride have different lengths");
      if (objs_[args[4]].kind != Kind::Bool && objs_[args[4]].kind != Kind::Int) err("requires_grad must be a bool");
      if (!is_dict_or_none(args[5])) err("tensor backward hooks must be a dict");
      if (args.size() == 7 && !(is_dict_or_none(args[6]) && objs_[args[6]].items.empty()))
        err("tensor metadata (a non-empty dict) is not supported");
      uint32_t id = make(Kind::Tensor);
      Obj& t = objs_[id];
      t.storage = args[0];
      t.dtype = objs_[args[0]].dtype;
      t.i = offset;
      t.shape = std::move(shape);
      t.strides = std::move(strides);
      return id;
    }
    case G::RebuildParameter:
    case G::RebuildParameterWithState: {
      const size_t want = c.global == G::RebuildParameter ? 3 : 4;
      if (args.size() != want) err(name + " expects " + std::to_string(want) + " arguments, got " + std::to_string(args.size()));
      if (objs_[args[0]].kind != Kind::Tensor) err(name + "'s first argument is not a tensor");
      if (c.global == G::RebuildParameterWithState) {
        const Obj& state = objs_[args[3]];
        if (!(state.kind == Kind::None || ((state.kind == Kind::Dict || state.kind == Kind::Tuple) && state.items.empty())))
          err("a Parameter with attributes (_rebuild_parameter_with_state with a non-empty state) is not supported");
      }
      return args[0];
    }
    case G::StorageType:
      err("REDUCE on " + name + " (torch.save never calls a storage type)");
  }
  err("REDUCE on an unknown callable");
}

uint32_t Unpickler::run() {
  while (true) {
    pos_ = static_cast<size_t>(p_ - begin_);
    if (p_ >= end_) err("pickle ends without STOP: truncated?");
    const uint8_t op = *p_++;
    switch (op) {
      case 0x80: {  // PROTO
        uint8_t v = *need(1);
        if (v < 2 || v > 5) err("pickle protocol " + std::to_string(v) + " (expected 2..5)");
        break;
      }
      case 0x95: {  // FRAME: a length hint, checked and otherwise ignored
        uint64_t len = rd64(need(8));
        if (len > static_cast<uint64_t>(end_ - p_)) err("pickle FRAME runs past the end: truncated?");
        break;
      }
      case '.': {  // STOP
        uint32_t r = pop();
        return r;
      }
      case '(':
        if (marks_.size() >= kMaxMarks) err("pickle nesting deeper than " + std::to_string(kMaxMarks) + " MARKs");
        marks_.push_back(stack_.size());
        break;
      case '0': pop(); break;      // POP
      case '1': pop_mark(); break;  // POP_MARK
      case '2': push(top()); break; // DUP
      case '}': push(make(Kind::Dict)); break;
      case ']': push(make(Kind::List)); break;
      case ')': push(make(Kind::Tuple)); break;
      case 't': case 'l': {
        std::vector<uint32_t> items = pop_mark();
        uint32_t id = make(op == 't' ? Kind::Tuple : Kind::List);
        objs_[id].items = std::move(items);
        push(id);
        break;
      }
      case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
        const size_t k = op - 0x84u;
        std::vector<uint32_t> items(k);
        for (size_t j = k; j-- > 0;) items[j] = pop();
        uint32_t id = make(Kind::Tuple);
        objs_[id].items = std::move(items);
        push(id);
        break;
      }
      case 'd': {  // DICT
        std::vector<uint32_t> items = pop_mark();
        if (items.size() % 2) err("DICT with an odd number of items");
        uint32_t id = make(Kind::Dict);
        objs_[id].items = std::move(items);
        push(id);
        break;
      }
      case 's': {  // SETITEM
        uint32_t v = pop(), k = pop();
        uint32_t d = top();
        if (objs_[d].kind != Kind::Dict) err(std::string("SETITEM on a ") + kind_name(objs_[d].kind));
        objs_[d].items.push_back(k);
        objs_[d].items.push_back(v);
        break;
      }
      case 'u': {  // SETITEMS
        std::vector<uint32_t> items = pop_mark();
        if (items.size() % 2) err("SETITEMS with an odd number of items");
        uint32_t d = top();
        if (objs_[d].kind != Kind::Dict) err(std::string("SETITEMS on a ") + kind_name(objs_[d].kind));
        objs_[d].items.insert(objs_[d].items.end(), items.begin(), items.end());
        break;
      }
      case 'a': {  // APPEND
        uint32_t v = pop();
        uint32_t l = top();
        if (objs_[l].kind != Kind::List) err(std::string("APPEND on a ") + kind_name(objs_[l].kind));
        objs_[l].items.push_back(v);
        break;
      }
      case 'e': {  // APPENDS
        std::vector<uint32_t> items = pop_mark();
        uint32_t l = top();
        if (objs_[l].kind != Kind::List) err(std::string("APPENDS on a ") + kind_name(objs_[l].kind));
        objs_[l].items.insert(objs_[l].items.end(), items.begin(), items.end());
        break;
      }
      case 'q': memo_put(*need(1), top()); break;           // BINPUT
      case 'r': memo_put(rd32(need(4)), top()); break;      // LONG_BINPUT
      case 0x94: memo_put(memo_.size(), top()); break;      // MEMOIZE
      case 'h': push(memo_get(*need(1))); break;            // BINGET
      case 'j': push(memo_get(rd32(need(4)))); break;       // LONG_BINGET
      case 'J': push(int_obj(static_cast<int32_t>(rd32(need(4))))); break;  // BININT
      case 'K': push(int_obj(*need(1))); break;                              // BININT1
      case 'M': push(int_obj(rd16(need(2)))); break;                         // BININT2
      case 0x8a: {  // LONG1: little-endian two's complement
        const uint8_t n = *need(1);
        const uint8_t* q = need(n);
        if (n > 8) {
          // Longer encodings are fine while the value fits: the extra bytes must be sign extension.
          const uint8_t ext = (q[7] & 0x80) ? 0xFF : 0x00;
          for (size_t j = 8; j < n; ++j)
            if (q[j] != ext) err("integer of " + std::to_string(n) + " bytes does not fit in 64 bits");
        }
        uint64_t v = 0;
        const size_t m = n < 8 ? n : 8;
        for (size_t j = 0; j < m; ++j) v |= static_cast<uint64_t>(q[j]) << (8 * j);
        if (m > 0 && m < 8 && (q[m - 1] & 0x80)) v |= ~uint64_t{0} << (8 * m);
        int64_t sv;
        std::memcpy(&sv, &v, sizeof sv);
        push(int_obj(sv));
        break;
      }
      case 'N': push(none_); break;
      case 0x88: push(true_); break;
      case 0x89: push(false_); break;
      case 'G': {  // BINFLOAT, big-endian
        const uint8_t* q = need(8);
        uint64_t v = 0;
        for (int j = 0; j < 8; ++j) v = (v << 8) | q[j];
        uint32_t id = make(Kind::Float);
        std::memcpy(&objs_[id].f, &v, sizeof v);
        push(id);
        break;
      }
      case 'X': push(str_obj(Kind::Str, rd32(need(4)))); break;
      case 0x8c: push(str_obj(Kind::Str, *need(1))); break;
      case 0x8d: push(str_obj(Kind::Str, rd64(need(8)))); break;
      case 'T': {  // BINSTRING: a signed 4-byte length
        int32_t len = static_cast<int32_t>(rd32(need(4)));
        if (len < 0) err("BINSTRING with a negative length");
        push(str_obj(Kind::Str, static_cast<uint64_t>(len)));
        break;
      }
      case 'U': push(str_obj(Kind::Str, *need(1))); break;
      case 'B': push(str_obj(Kind::Bytes, rd32(need(4)))); break;
      case 'C': push(str_obj(Kind::Bytes, *need(1))); break;
      case 0x8e: push(str_obj(Kind::Bytes, rd64(need(8)))); break;
      case 'c': {  // GLOBAL
        std::string module = line();
        std::string name = line();
        push(global(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        uint32_t n = pop(), m = pop();
        if (objs_[n].kind != Kind::Str || objs_[m].kind != Kind::Str) err("STACK_GLOBAL needs two strings");
        if (objs_[m].s.size() > kMaxGlobalPart || objs_[n].s.size() > kMaxGlobalPart) err("STACK_GLOBAL name too long");
        push(global(objs_[m].s, objs_[n].s));
        break;
      }
      case 'R': {  // REDUCE
        uint32_t args = pop(), callable = pop();
        push(reduce(callable, args));
        break;
      }
      case 'b': {  // BUILD: only a dict's instance state (an OrderedDict's _metadata), which is ignored
        uint32_t state = pop();
        uint32_t target = top();
        if (objs_[target].kind != Kind::Dict)
          err(std::string("BUILD on a ") + kind_name(objs_[target].kind) + " (only an OrderedDict's state is accepted)");
        const Kind sk = objs_[state].kind;
        if (sk != Kind::Dict && sk != Kind::None && sk != Kind::Tuple) err(std::string("BUILD with a ") + kind_name(sk) + " state");
        break;
      }
      case 'Q': push(persistent_load(pop())); break;  // BINPERSID
      default: {
        char buf[64];
        std::snprintf(buf, sizeof buf, "unsupported pickle opcode 0x%02x", op);
        err(buf);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------ flattening

struct Flattener {
  const Unpickler& up;
  const std::string& what;
  const uint8_t* input;
  size_t input_size;
  ParsedTorchCheckpoint& out;
  size_t visits = 0;
  uint64_t owned_bytes = 0;
  uint64_t owned_budget;
  uint64_t name_budget;
  uint64_t name_bytes = 0;
  std::unordered_set<uint32_t> seen_dicts;

  std::string describe(const Obj& o) const {
    switch (o.kind) {
      case Kind::None: return "None";
      case Kind::Bool: return o.i ? "True" : "False";
      case Kind::Int: return std::to_string(o.i);
      case Kind::Float: { char buf[40]; std::snprintf(buf, sizeof buf, "%.17g", o.f); return buf; }
      case Kind::Str: return "'" + printable(o.s, 200) + "'";
      case Kind::Bytes: return "bytes[" + std::to_string(o.s.size()) + "]";
      case Kind::Tuple: return "tuple[" + std::to_string(o.items.size()) + "]";
      case Kind::List: return "list[" + std::to_string(o.items.size()) + "]";
      case Kind::Dict: return "dict[" + std::to_string(o.items.size() / 2) + "]";
      case Kind::Global: return printable(o.s);
      case Kind::Storage: return "storage";
      case Kind::Tensor: return "tensor";
    }
    return "?";
  }

  void dict(uint32_t id, const std::string& prefix, int depth) {
    if (depth > kMaxDictDepth) bad(what, "dicts nested deeper than " + std::to_string(kMaxDictDepth) + " levels");
    // A dict reached twice (a shared sub-dict, or a cycle) would multiply the names: refused.
    if (!seen_dicts.insert(id).second)
      bad(what, "the same dict appears twice in the checkpoint ('" + printable(prefix) + "'): shared sub-dicts are not supported");
    const Obj& d = up.obj(id);
    for (size_t j = 0; j + 1 < d.items.size(); j += 2) {
      if (++visits > kMaxFlattenVisits) bad(what, "the state dict has more than " + std::to_string(kMaxFlattenVisits) + " entries (shared sub-dicts?)");
      const Obj& k = up.obj(d.items[j]);
      std::string key;
      if (k.kind == Kind::Str) key = k.s;
      else if (k.kind == Kind::Int) key = std::to_string(k.i);
      else bad(what, std::string("a state dict key is a ") + kind_name(k.kind) + ", not a string");
      if (!valid_utf8(key)) bad(what, "a state dict key is not valid UTF-8 ('" + printable(key) + "')");
      std::string name = prefix.empty() ? key : prefix + "." + key;
      if (name.size() > kMaxNameLength) bad(what, "a tensor name longer than " + std::to_string(kMaxNameLength) + " bytes");
      name_bytes += name.size();
      if (name_bytes > name_budget) bad(what, "the flattened names take more than 4 x the file size + 1 MiB");
      const uint32_t vid = d.items[j + 1];
      const Obj& v = up.obj(vid);
      if (v.kind == Kind::Dict) {
        dict(vid, name, depth + 1);
      } else if (v.kind == Kind::Tensor) {
        tensor(name, v);
      } else {
        if (out.metadata.count(name) || out.tensors.count(name)) bad(what, "duplicate name '" + printable(name) + "'");
        if (out.metadata.size() < kMaxMetadata) out.metadata[name] = describe(v);
      }
    }
  }

  void tensor(const std::string& name, const Obj& t) {
    if (out.tensors.count(name) || out.metadata.count(name)) bad(what, "duplicate tensor name '" + printable(name) + "'");
    const Obj& st = up.obj(t.storage);
    const uint64_t es = dtype_size(t.dtype);
    const uint64_t storage_numel = static_cast<uint64_t>(st.i);
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d != 0 && numel > (uint64_t{1} << 62) / static_cast<uint64_t>(d)) bad(what, "tensor '" + printable(name) + "': element count overflows");
      numel *= static_cast<uint64_t>(d);
    }
    const uint64_t offset = static_cast<uint64_t>(t.i);
    if (numel > 0) {
      // The last element's index, overflow-checked: it must lie inside the storage.
      uint64_t last = offset;
      for (size_t j = 0; j < t.shape.size(); ++j) {
        const uint64_t span = static_cast<uint64_t>(t.shape[j] - 1), stride = static_cast<uint64_t>(t.strides[j]);
        if (stride != 0 && span > (uint64_t{1} << 62) / stride) bad(what, "tensor '" + printable(name) + "': stride x size overflows");
        last += span * stride;
        if (last > (uint64_t{1} << 62)) bad(what, "tensor '" + printable(name) + "': extent overflows");
      }
      if (last >= storage_numel)
        bad(what, "tensor '" + printable(name) + "' reaches element " + std::to_string(last) + " of storage '" + printable(st.s) +
                      "', which holds " + std::to_string(storage_numel) + " elements");
    } else if (offset > storage_numel) {
      bad(what, "tensor '" + printable(name) + "': storage offset " + std::to_string(offset) + " past storage '" + printable(st.s) + "' (" +
                    std::to_string(storage_numel) + " elements)");
    }
    bool contiguous = true;
    uint64_t expect = 1;
    for (size_t j = t.shape.size(); j-- > 0;) {
      if (t.shape[j] != 1 && static_cast<uint64_t>(t.strides[j]) != expect) contiguous = false;
      expect *= static_cast<uint64_t>(t.shape[j]);
    }
    if (numel == 0) contiguous = true;
    TorchTensorRecord rec{t.dtype, t.shape, t.strides, t.i, st.s, contiguous};
    TensorView v{t.dtype, t.shape, nullptr, static_cast<size_t>(numel * es)};
    if (contiguous) {
      v.data = st.data + offset * es;
    } else {
      const uint64_t nbytes = numel * es;
      if (nbytes > owned_budget - owned_bytes)
        bad(what, "tensor '" + printable(name) + "' is a non-contiguous view of " + std::to_string(nbytes) +
                      " bytes: copies of such views may take at most 8 x the file size + 1 MiB in all");
      owned_bytes += nbytes;
      auto buf = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(nbytes));
      const size_t nd = t.shape.size();
      std::vector<int64_t> idx(nd, 0);
      // Copy runs along the last dimension; the source index is recomputed from the strides (validated above).
      const uint64_t run = nd ? static_cast<uint64_t>(t.shape[nd - 1]) : 1;
      const uint64_t last_stride = nd ? static_cast<uint64_t>(t.strides[nd - 1]) : 1;
      uint8_t* dst = buf->data();
      for (uint64_t done = 0; done < numel; done += run) {
        uint64_t src = offset;
        for (size_t j = 0; j + 1 < nd; ++j) src += static_cast<uint64_t>(idx[j]) * static_cast<uint64_t>(t.strides[j]);
        if (last_stride == 1) {
          std::memcpy(dst, st.data + src * es, run * es);
          dst += run * es;
        } else {
          for (uint64_t r = 0; r < run; ++r, dst += es) std::memcpy(dst, st.data + (src + r * last_stride) * es, es);
        }
        for (size_t j = nd - 1; j-- > 0;) {  // odometer over the leading dimensions
          if (++idx[j] < t.shape[j]) break;
          idx[j] = 0;
        }
      }
      v.data = buf->data();
      out.owned.push_back(std::move(buf));
    }
    (void)input;
    (void)input_size;
    out.names.push_back(name);
    out.tensors[name] = std::move(v);
    out.records[name] = std::move(rec);
  }
};

ParsedTorchCheckpoint parse_impl(const uint8_t* bytes, size_t size, const std::string& what) {
  if (looks_like_legacy_torch(bytes, size)) fail("E_CHECKPOINT", legacy_torch_message(what));
  if (size < 4 || std::memcmp(bytes, "PK", 2) != 0) bad(what, "not a torch.save zip archive (no 'PK' signature)");
  std::map<std::string, ZipRecord> zip = read_zip(bytes, size, what);
  std::string root;
  int found = 0;
  for (const auto& [name, r] : zip) {
    const size_t slash = name.find('/');
    if (slash != std::string::npos && slash > 0 && name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      root = name.substr(0, slash);
      ++found;
    }
  }
  if (found == 0) bad(what, "zip archive without '<name>/data.pkl': not a torch.save checkpoint");
  if (found > 1) bad(what, "zip archive with several '<name>/data.pkl' records: not a torch.save checkpoint");
  for (const auto& [name, r] : zip)
    if (name.compare(0, root.size() + 6, root + "/code/") == 0 || name == root + "/constants.pkl")
      bad(what, "a TorchScript archive (torch.jit.save), not a torch.save checkpoint: save model.state_dict() with torch.save");
  auto bo = zip.find(root + "/byteorder");
  if (bo != zip.end()) {
    std::string order(reinterpret_cast<const char*>(bytes + bo->second.data_offset), static_cast<size_t>(std::min<uint64_t>(bo->second.size, 16)));
    if (order == "big") bad(what, "a big-endian checkpoint (byteorder 'big'): re-save it on a little-endian machine");
    if (order != "little") bad(what, "unknown byteorder '" + printable(order) + "'");
  }
  const ZipRecord& pkl = zip.at(root + "/data.pkl");
  Unpickler up(bytes + pkl.data_offset, static_cast<size_t>(pkl.size), what, root + "/data.pkl", zip, bytes, root);
  const uint32_t result = up.run();
  ParsedTorchCheckpoint out;
  out.root = root;
  if (up.obj(result).kind != Kind::Dict)
    bad(what, std::string("data.pkl holds a ") + kind_name(up.obj(result).kind) + ", not a dict of tensors (save model.state_dict())");
  Flattener fl{up, what, bytes, size, out, 0, 0, static_cast<uint64_t>(size) * 8 + (1u << 20), static_cast<uint64_t>(size) * 4 + (1u << 20), 0, {}};
  fl.dict(result, "", 0);
  return out;
}

// ------------------------------------------------------------------------------------------------ writing

uint32_t crc32_update(uint32_t crc, const uint8_t* p, size_t n) {
  static uint32_t table[256];
  static const bool init = [] {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    return true;
  }();
  (void)init;
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

void put16(std::string& s, uint16_t v) { s += static_cast<char>(v & 0xFF); s += static_cast<char>(v >> 8); }
void put32(std::string& s, uint32_t v) { for (int i = 0; i < 4; ++i) s += static_cast<char>((v >> (8 * i)) & 0xFF); }
void put64(std::string& s, uint64_t v) { for (int i = 0; i < 8; ++i) s += static_cast<char>((v >> (8 * i)) & 0xFF); }

struct PickleOut {
  std::string s;
  void str(const std::string& v) { s += 'X'; put32(s, static_cast<uint32_t>(v.size())); s += v; }
  void integer(int64_t v) {
    if (v >= 0 && v < 256) { s += 'K'; s += static_cast<char>(v); }
    else if (v >= 0 && v < 65536) { s += 'M'; put16(s, static_cast<uint16_t>(v)); }
    else if (v >= INT32_MIN && v <= INT32_MAX) { s += 'J'; put32(s, static_cast<uint32_t>(static_cast<int32_t>(v))); }
    else { s += '\x8a'; s += '\x08'; put64(s, static_cast<uint64_t>(v)); }
  }
  void global(const char* module, const char* name) { s += 'c'; s += module; s += '\n'; s += name; s += '\n'; }
  void tuple(const std::vector<int64_t>& v) {
    if (v.empty()) { s += ')'; return; }
    s += '(';
    for (int64_t x : v) integer(x);
    s += 't';
  }
};

}  // namespace

bool looks_like_pickle(const uint8_t* b, size_t n) { return n >= 2 && b[0] == 0x80 && b[1] >= 2 && b[1] <= 5; }

bool looks_like_legacy_torch(const uint8_t* b, size_t n) {
  if (n >= 262 && std::memcmp(b + 257, "ustar", 5) == 0) return true;  // the pre-1.6 tar layout
  if (!looks_like_pickle(b, n)) return false;
  size_t p = 2;
  if (n >= p + 9 && b[p] == 0x95) p += 9;  // FRAME
  static const uint8_t magic[] = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
  return n >= p + sizeof magic && std::memcmp(b + p, magic, sizeof magic) == 0;
}

std::string legacy_torch_message(const std::string& what) {
  return what + ": legacy torch.save format (before torch 1.6, or _use_new_zipfile_serialization=False): re-save with torch >= 1.6 "
                "(torch.save(torch.load(f), f2))";
}

ParsedTorchCheckpoint parse_torch_checkpoint(const uint8_t* bytes, size_t size, const std::string& what) {
  try {
    return parse_impl(bytes, size, what);
  } catch (const std::bad_alloc&) {
    bad(what, "out of memory while reading the checkpoint");
  } catch (const std::length_error&) {
    bad(what, "out of memory while reading the checkpoint");
  }
}

void write_torch_checkpoint(const std::string& path, const std::vector<TorchTensorToWrite>& entries, bool force_zip64) {
  // Storages: one per entry that is not an alias, in order.
  struct Storage { const TorchTensorToWrite* t; uint64_t numel; };
  std::vector<Storage> storages;
  std::map<std::string, size_t> storage_of;
  std::set<std::string> names;
  PickleOut pk;
  pk.s = "\x80\x02";
  pk.global("collections", "OrderedDict");
  pk.s += ")R";
  if (!entries.empty()) pk.s += '(';
  for (const auto& e : entries) {
    if (!names.insert(e.name).second) fail("E_VALUE", "write_torch_checkpoint: duplicate tensor name '" + e.name + "'");
    uint64_t numel = 1;
    for (int64_t d : e.shape) {
      if (d < 0) fail("E_VALUE", "write_torch_checkpoint: tensor '" + e.name + "' has a negative dimension");
      numel *= static_cast<uint64_t>(d);
    }
    size_t sidx;
    if (e.alias_of.empty()) {
      if (numel * dtype_size(e.dtype) != e.nbytes) fail("E_VALUE", "write_torch_checkpoint: tensor '" + e.name + "' byte length disagrees with its shape");
      sidx = storages.size();
      storages.push_back({&e, numel});
      storage_of[e.name] = sidx;
    } else {
      auto it = storage_of.find(e.alias_of);
      if (it == storage_of.end())
        fail("E_VALUE", "write_torch_checkpoint: '" + e.name + "' aliases '" + e.alias_of + "', which is not an earlier tensor of its own");
      sidx = it->second;
      const Storage& s = storages[sidx];
      if (s.t->dtype != e.dtype || numel > s.numel)
        fail("E_VALUE", "write_torch_checkpoint: '" + e.name + "' must have the dtype of '" + e.alias_of + "' and at most its elements");
    }
    const Storage& s = storages[sidx];
    std::vector<int64_t> strides(e.shape.size());
    int64_t st = 1;
    for (size_t j = e.shape.size(); j-- > 0;) { strides[j] = st; st *= e.shape[j]; }
    pk.str(e.name);
    pk.global("torch._utils", "_rebuild_tensor_v2");
    pk.s += '(';
    pk.s += '(';
    pk.str("storage");
    pk.global("torch", storage_name(s.t->dtype));
    pk.str(std::to_string(sidx));
    pk.str("cpu");
    pk.integer(static_cast<int64_t>(s.numel));
    pk.s += "tQ";
    pk.integer(0);
    pk.tuple(e.shape);
    pk.tuple(strides);
    pk.s += '\x89';
    pk.global("collections", "OrderedDict");
    pk.s += ")R";
    pk.s += "tR";
  }
  if (!entries.empty()) pk.s += 'u';
  pk.s += '.';

  // The records, in torch's order.
  const std::string root = "archive";
  struct Rec { std::string name; const uint8_t* data; uint64_t size; uint32_t crc; uint64_t offset; };
  std::vector<Rec> recs;
  static const std::string little = "little", version = "3\n";
  recs.push_back({root + "/data.pkl", reinterpret_cast<const uint8_t*>(pk.s.data()), pk.s.size(), 0, 0});
  recs.push_back({root + "/byteorder", reinterpret_cast<const uint8_t*>(little.data()), little.size(), 0, 0});
  for (size_t i = 0; i < storages.size(); ++i)
    recs.push_back({root + "/data/" + std::to_string(i), static_cast<const uint8_t*>(storages[i].t->data), storages[i].t->nbytes, 0, 0});
  recs.push_back({root + "/version", reinterpret_cast<const uint8_t*>(version.data()), version.size(), 0, 0});
  for (auto& r : recs) r.crc = crc32_update(0, r.data, static_cast<size_t>(r.size));
  const uint16_t dos_date = (0 << 9) | (1 << 5) | 1;  // 1980-01-01, as miniz writes without a clock
  // The fields local and central headers share: flags, method (stored), time, date, CRC, sizes, name length.
  auto put_common = [&](std::string& h, const Rec& r, bool big_size) {
    put16(h, 0);
    put16(h, 0);
    put16(h, 0);
    put16(h, dos_date);
    put32(h, r.crc);
    put32(h, big_size ? 0xFFFFFFFFu : static_cast<uint32_t>(r.size));
    put32(h, big_size ? 0xFFFFFFFFu : static_cast<uint32_t>(r.size));
    put16(h, static_cast<uint16_t>(r.name.size()));
  };

  AtomicFile file(path);
  uint64_t off = 0;
  for (auto& r : recs) {
    r.offset = off;
    const bool z64 = force_zip64 || r.size >= 0xFFFFFFFFu;
    std::string h;
    put32(h, 0x04034b50);
    put16(h, z64 ? 45 : 20);
    put_common(h, r, z64);
    std::string extra;
    if (z64) { put16(extra, 0x0001); put16(extra, 16); put64(extra, r.size); put64(extra, r.size); }
    // "FB" padding so the data starts 64-byte aligned (PyTorchStreamWriter's kFieldAlignment).
    const uint64_t base = off + 30 + r.name.size() + extra.size() + 4;
    const uint64_t pad = (64 - base % 64) % 64;
    put16(extra, 0x4246);
    put16(extra, static_cast<uint16_t>(pad));
    extra.append(static_cast<size_t>(pad), 'Z');
    put16(h, static_cast<uint16_t>(extra.size()));
    h += r.name;
    h += extra;
    file.write(h.data(), h.size());
    if (r.size) file.write(r.data, static_cast<size_t>(r.size));
    off += h.size() + r.size;
  }
  const uint64_t cd_off = off;
  std::string cd;
  for (const auto& r : recs) {
    const bool big_size = force_zip64 || r.size >= 0xFFFFFFFFu, big_off = force_zip64 || r.offset >= 0xFFFFFFFFu;
    std::string extra;
    if (big_size || big_off) {
      put16(extra, 0x0001);
      put16(extra, static_cast<uint16_t>((big_size ? 16 : 0) + (big_off ? 8 : 0)));
      if (big_size) { put64(extra, r.size); put64(extra, r.size); }
      if (big_off) put64(extra, r.offset);
    }
    put32(cd, 0x02014b50);
    put16(cd, extra.empty() ? 20 : 45);
    put16(cd, extra.empty() ? 20 : 45);
    put_common(cd, r, big_size);
    put16(cd, static_cast<uint16_t>(extra.size()));
    put16(cd, 0);
    put16(cd, 0);
    put16(cd, 0);
    put32(cd, 0);
    put32(cd, big_off ? 0xFFFFFFFFu : static_cast<uint32_t>(r.offset));
    cd += r.name;
    cd += extra;
  }
  const uint64_t cd_size = cd.size(), count = recs.size();
  const bool z64 = force_zip64 || count >= 0xFFFF || cd_off >= 0xFFFFFFFFu || cd_size >= 0xFFFFFFFFu;
  if (z64) {
    const uint64_t rec_off = cd_off + cd_size;
    put32(cd, 0x06064b50);
    put64(cd, 44);
    put16(cd, 45);
    put16(cd, 45);
    put32(cd, 0);
    put32(cd, 0);
    put64(cd, count);
    put64(cd, count);
    put64(cd, cd_size);
    put64(cd, cd_off);
    put32(cd, 0x07064b50);
    put32(cd, 0);
    put64(cd, rec_off);
    put32(cd, 1);
  }
  put32(cd, 0x06054b50);
  put16(cd, 0);
  put16(cd, 0);
  put16(cd, z64 ? 0xFFFF : static_cast<uint16_t>(count));
  put16(cd, z64 ? 0xFFFF : static_cast<uint16_t>(count));
  put32(cd, z64 ? 0xFFFFFFFFu : static_cast<uint32_t>(cd_size));
  put32(cd, z64 ? 0xFFFFFFFFu : static_cast<uint32_t>(cd_off));
  put16(cd, 0);
  file.write(cd.data(), cd.size());
  file.commit();
}

}  // namespace semicap
