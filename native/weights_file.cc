// WeightsFile::open: one loader for every weights format (declared in safetensors.h). Torch-free like the parsers
// it calls: safetensors (safetensors.cc), torch.save zip checkpoints (torch_checkpoint.cc), sharded folders.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "errors.h"
#include "json_reader.h"
#include "safetensors.h"
#include "torch_checkpoint.h"

namespace semicap {

namespace {

[[noreturn]] void bad(const std::string& what, const std::string& why) { fail("E_CHECKPOINT", what + ": " + why); }

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

struct Fd {
  int fd = -1;
  ~Fd() { if (fd >= 0) ::close(fd); }
};

}  // namespace

// Opens one file (not an index) into `f`, appending its names, views and metadata to `out`.
struct WeightsFileLoader {
  static void one(WeightsFile& f, const std::string& path, ParsedSafetensors& out, std::string* format) {
    Fd fd;
    fd.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd.fd < 0) bad(path, std::string("cannot open: ") + std::strerror(errno));
    struct stat st;
    if (fstat(fd.fd, &st) != 0 || !S_ISREG(st.st_mode)) bad(path, "not a regular file");
    const size_t size = static_cast<size_t>(st.st_size);
    void* map = nullptr;
    if (size > 0) {
      // Private and writable: parameters can live on these pages (copy-on-write when training changes them; the
      // file is never written through this mapping).
      map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd.fd, 0);
      if (map == MAP_FAILED) bad(path, std::string("mmap failed: ") + std::strerror(errno));
      f.maps_.push_back({map, size});
    }
    static const uint8_t empty = 0;
    const uint8_t* bytes = map ? static_cast<const uint8_t*>(map) : &empty;
    // A zip is a torch.save checkpoint. Should its parse fail, the bytes may still be a safetensors file whose
    // header length happens to begin with a zip signature (0x04034b50 = 67 MB): that is tried before giving up.
    const bool zipish = size >= 4 && bytes[0] == 'P' && bytes[1] == 'K' && ((bytes[2] == 3 && bytes[3] == 4) || (bytes[2] == 5 && bytes[3] == 6));
    if (zipish) {
      ParsedTorchCheckpoint t;
      try {
        t = parse_torch_checkpoint(bytes, size, path);
      } catch (const Error& e) {
        const Error first = e;
        ParsedSafetensors p;
        try {
          p = parse_safetensors(bytes, size, path);
        } catch (const Error&) {
          throw first;
        }
        *format = "safetensors";
        for (auto& n : p.names) out.names.push_back(n);
        for (auto& [n, v] : p.tensors) out.tensors[n] = std::move(v);
        for (auto& [k, v] : p.metadata) out.metadata.emplace(k, v);
        return;
      }
      *format = "torch";
      for (auto& b : t.owned) f.owned_.push_back(b);
      // Views into the mapping that overlap (tensors sharing a storage) are moved onto their own private mappings of
      // the same pages, so that a parameter adopting one never sees another's writes.
      std::vector<TensorView*> views;
      for (const auto& n : t.names) {
        TensorView& v = t.tensors.at(n);
        if (v.nbytes > 0 && t.records.at(n).zero_copy) views.push_back(&v);
      }
      std::stable_sort(views.begin(), views.end(), [](const TensorView* a, const TensorView* b) { return a->data < b->data; });
      const uint8_t* reach = nullptr;
      const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
      for (TensorView* v : views) {
        if (reach != nullptr && v->data < reach) {
          const size_t off = static_cast<size_t>(v->data - bytes);
          const size_t base = off / page * page;
          void* m = mmap(nullptr, off - base + v->nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd.fd, static_cast<off_t>(base));
          if (m == MAP_FAILED) bad(path, std::string("mmap failed: ") + std::strerror(errno));
          f.maps_.push_back({m, off - base + v->nbytes});
          v->data = static_cast<const uint8_t*>(m) + (off - base);
        } else {
          reach = std::max(reach, v->data + v->nbytes);
        }
      }
      for (auto& n : t.names) out.names.push_back(n);
      for (auto& [n, v] : t.tensors) out.tensors[n] = std::move(v);
      for (auto& [k, v] : t.metadata) out.metadata.emplace(k, v);
      return;
    }
    // Safetensors first: only when that fails is the file looked at as a legacy torch file (a pickle, or a tar).
    ParsedSafetensors p;
    try {
      p = parse_safetensors(bytes, size, path);
    } catch (const Error&) {
      if (looks_like_legacy_torch(bytes, size) || looks_like_pickle(bytes, size)) fail("E_CHECKPOINT", legacy_torch_message(path));
      throw;
    }
    *format = "safetensors";
    for (auto& n : p.names) out.names.push_back(n);
    for (auto& [n, v] : p.tensors) out.tensors[n] = std::move(v);
    for (auto& [k, v] : p.metadata) out.metadata.emplace(k, v);
  }

  static void sharded(WeightsFile& f, const std::string& path) {
    Fd fd;
    fd.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd.fd < 0) bad(path, std::string("cannot open: ") + std::strerror(errno));
    struct stat st;
    if (fstat(fd.fd, &st) != 0 || !S_ISREG(st.st_mode)) bad(path, "not a regular file");
    if (static_cast<uint64_t>(st.st_size) > kMaxHeaderBytes) bad(path, "index larger than 100 MB");
    std::string text(static_cast<size_t>(st.st_size), '\0');
    size_t got = 0;
    while (got < text.size()) {
      ssize_t r = ::read(fd.fd, &text[got], text.size() - got);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) bad(path, std::string("read failed: ") + (r < 0 ? std::strerror(errno) : "short read"));
      got += static_cast<size_t>(r);
    }
    JsonReader jr(text.data(), text.size(), path, "invalid index JSON");
    Json root = jr.value();
    if (!jr.at_end()) jr.bad("trailing bytes");
    if (root.type != Json::Object) bad(path, "a sharded index must be a JSON object");
    const Json* map = nullptr;
    std::map<std::string, std::string> meta;
    for (const auto& [k, v] : root.members) {
      if (k == "weight_map") {
        if (v.type != Json::Object) bad(path, "weight_map must be an object");
        map = &v;
      } else if (k == "metadata") {
        if (v.type != Json::Object && v.type != Json::Null) bad(path, "metadata must be an object");
        for (const auto& [mk, mv] : v.members)
          if (mv.type != Json::Object && mv.type != Json::Array && mv.type != Json::Null) meta[mk] = mv.text;
      }
    }
    if (!map) bad(path, "a sharded index needs a weight_map ({name: shard file})");
    const std::string dir = path.find('/') == std::string::npos ? std::string(".") : path.substr(0, path.rfind('/'));
    std::map<std::string, std::string> shard_of;
    std::vector<std::string> shards;
    for (const auto& [name, file] : map->members) {
      if (file.type != Json::String) bad(path, "weight_map['" + name + "'] must be a file name");
      const std::string& s = file.text;
      if (s.empty() || s == "." || s == ".." || s.find('/') != std::string::npos || s.find('\\') != std::string::npos || s.find('\0') != std::string::npos)
        bad(path, "weight_map['" + name + "'] = '" + s + "' is not a plain file name in the index's folder");
      if (!shard_of.emplace(name, s).second) bad(path, "weight_map lists '" + name + "' twice");
      if (std::find(shards.begin(), shards.end(), s) == shards.end()) shards.push_back(s);
    }
    ParsedSafetensors& out = f.parsed_;
    for (const auto& s : shards) {
      const std::string sp = dir + "/" + s;
      ParsedSafetensors part;
      std::string fmt;
      one(f, sp, part, &fmt);
      for (const auto& n : part.names) {
        auto it = shard_of.find(n);
        if (it == shard_of.end()) bad(path, "shard " + s + " holds '" + n + "', which the weight_map does not list");
        if (it->second != s) bad(path, "shard " + s + " holds '" + n + "', which the weight_map places in " + it->second);
        if (out.tensors.count(n)) bad(path, "'" + n + "' appears in two shards");
        out.names.push_back(n);
        out.tensors[n] = part.tensors.at(n);
      }
      for (const auto& [k, v] : part.metadata) meta.emplace(k, v);
    }
    for (const auto& [name, s] : shard_of)
      if (!out.tensors.count(name)) bad(path, "weight_map places '" + name + "' in " + s + ", which does not hold it");
    out.metadata = std::move(meta);
  }
};

std::shared_ptr<WeightsFile> WeightsFile::open(const std::string& path) {
  std::shared_ptr<WeightsFile> f(new WeightsFile());
  f->path_ = path;
  if (ends_with(path, ".index.json")) {
    f->format_ = "sharded";
    WeightsFileLoader::sharded(*f, path);
  } else {
    WeightsFileLoader::one(*f, path, f->parsed_, &f->format_);
  }
  return f;
}

WeightsFile::~WeightsFile() {
  for (const auto& m : maps_) munmap(m.addr, m.size);
}

}  // namespace semicap
