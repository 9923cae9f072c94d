// The Python module `mnv3_fast._C`.  Importing it runs the static
// TORCH_LIBRARY_IMPL registrations of the CPU kernels; the op schemas
// themselves are defined once, in Python (mnv3_fast/ops/_library.py), so the
// package works the same with and without this extension.
//
// It also exports:
// * PROGRAM_TABLE: the CPU program's opcodes and activation codes as this
//   binary knows them (tests compare them with the Python source of truth);
// * model_state(model, ...): what the plan cache compares on every call to know
//   whether anything the fold reads changed (see mnv3_fast/plan/cache.py), and
//   fingerprint(tensors), its tensor part;
// * pack_pointwise(weight) and POINTWISE_DTYPES: the CPU program's PWCONV weights, and the dtypes this
//   build and CPU run PWCONV in.
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include <algorithm>
#include <cstring>

#include <torch/csrc/Exceptions.h>

#include "ops.h"
#include "program_table.h"

namespace {

// A cheap checksum of a buffer: the sum and the xor of its 8-byte words
// (vectorizes to memory speed); position-insensitive, which is fine for
// noticing that values changed.
void checksum(const char* p, size_t n, uint64_t& sum, uint64_t& x) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    sum += w;
    x ^= w;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, p + i, n - i);
  sum += tail;
}

constexpr size_t kWholeBytes = 4096;  // tensors up to this size are read whole (BN statistics, biases)
constexpr int kSamples = 8;           // larger ones: this many 8-byte samples spread over the tensor
                                      // (each a cache miss after a forward: 64 cost ~40 us for Small)

// The addresses the last model_state walk read (module objects, their dicts and
// dict tables, tensor objects and impls, tensor data), so that the next walk of
// the same model can prefetch them all at once: after a forward has streamed
// megabytes of weights through the caches, the walk's pointer chase otherwise
// waits on one miss after another (measured on a 2-vCPU Xeon, Large bf16 after a
// batch-1 forward: 154 us a walk without prefetching, 122 us with it, 61 us warm).
// A stale address is harmless: prefetches never fault.
struct TouchList {
  static constexpr int kRefreshEvery = 64;  // walks between two recordings (recording costs ~10 us)
  const void* model = nullptr;  // (compared by address only)
  std::vector<const void*> addresses;
  bool recording = false;
  int walks = 0;

  // Prefetches what the last recorded walk of `m` read; decides whether this walk records.
  void start(const void* m) {
    if (m == model)
      for (const void* a : addresses) __builtin_prefetch(a);
    recording = m != model || ++walks >= kRefreshEvery;
    if (recording) {
      model = m;
      walks = 0;
      addresses.clear();
    }
  }
  void add(const void* a) {
    if (recording) addresses.push_back(a);
  }
  // A dict: its object, the first `lines` cache lines of its key table (where the
  // hash index and the entries are), and its values where they are split off.
  void add_dict(PyObject* d, size_t lines = 2) {
    if (!recording) return;
    auto* dict = reinterpret_cast<PyDictObject*>(d);
    add_lines(d, sizeof(PyDictObject));
    add_lines(dict->ma_keys, 64 * lines);
    if (dict->ma_values) add(dict->ma_values);
  }
  void add_lines(const void* a, size_t bytes) {
    if (!recording) return;
    const char* p = static_cast<const char*>(a);
    for (size_t i = 0; i < bytes; i += 64) addresses.push_back(p + i);
  }
};

inline void mix(uint64_t& h, uint64_t v) {  // (boost's hash_combine)
  h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
}

// Everything about one tensor that may change what a fold of it gives: its
// identity, version counter, shape, dtype, requires_grad, storage address,
// and, for CPU tensors, its content (whole up to 4 KiB, else 64 samples).
// The content is what catches writes that bypass the version counter
// (`tensor.data`, fused optimizer kernels).
struct TensorDigest {
  uint64_t h = 0xCBF29CE484222325ull, sum = 0, x = 0;
  bool any_grad = false, cacheable = true;
  bool read_content = true;
  TouchList* touch = nullptr;

  // Returns false (with a Python error set) if `o` is neither a tensor nor None.
  bool add(PyObject* o) {
    mix(h, reinterpret_cast<uintptr_t>(o));
    if (o == Py_None) return true;
    if (!THPVariable_Check(o)) {
      PyErr_Format(PyExc_TypeError, "expected a tensor, got %s", Py_TYPE(o)->tp_name);
      return false;
    }
    const at::Tensor& t = THPVariable_Unpack(o);
    if (touch && touch->recording) {
      touch->add_lines(o, sizeof(THPVariable));
      touch->add_lines(t.unsafeGetTensorImpl(), sizeof(c10::TensorImpl));
      if (t.has_storage()) touch->add(t.storage().unsafeGetStorageImpl());
      if (t.unsafeGetTensorImpl()->autograd_meta()) touch->add(t.unsafeGetTensorImpl()->autograd_meta());
    }
    if (t.is_inference()) {  // (no version counter: don't cache)
      cacheable = false;
      return true;
    }
    mix(h, static_cast<uint64_t>(t._version()));
    any_grad = any_grad || t.requires_grad();
    mix(h, t.requires_grad());
    mix(h, static_cast<uint64_t>(t.scalar_type()));
    for (int64_t s : t.sizes()) mix(h, static_cast<uint64_t>(s));
    if (!t.has_storage() || t.numel() == 0) return true;
    mix(h, reinterpret_cast<uintptr_t>(t.const_data_ptr()));
    if (!read_content || !t.device().is_cpu() || !t.is_contiguous()) return true;  // (GPU: would synchronize)
    const char* p = static_cast<const char*>(t.const_data_ptr());
    const size_t bytes = t.numel() * t.element_size();
    if (bytes <= kWholeBytes) {
      if (touch) touch->add_lines(p, bytes);
      checksum(p, bytes, sum, x);
    } else {
      for (int k = 0; k < kSamples; ++k) {
        uint64_t w;
        if (touch) touch->add(p + (bytes - 8) / (kSamples - 1) * k);
        std::memcpy(&w, p + (bytes - 8) / (kSamples - 1) * k, 8);
        mix(h, w);
      }
    }
    return true;
  }

  uint64_t digest() const {
    uint64_t d = h;
    mix(d, sum);
    mix(d, x);
    return d;
  }
};

// fingerprint(tensors: list[Tensor | None]) -> (hash, any requires grad, cacheable)
PyObject* fingerprint(PyObject*, PyObject* arg) {
  PyObject* seq = PySequence_Fast(arg, "fingerprint: expected a list of tensors");
  if (!seq) return nullptr;
  TensorDigest digest;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!digest.add(items[i])) {
      Py_DECREF(seq);
      return nullptr;
    }
  }
  Py_DECREF(seq);
  return Py_BuildValue("(KOO)", static_cast<unsigned long long>(digest.digest()),
                       digest.any_grad ? Py_True : Py_False, digest.cacheable ? Py_True : Py_False);
}

// model_state(model, hyperparameters, mode_sensitive, read_content)
//   -> (hash, any requires grad, cacheable, hooked, training, keep_alive)
//
// The C++ twin of mnv3_fast.plan.cache.read_state_python (which documents
// what is read, and why): one walk over the module tree through the modules'
// own __dict__s.  `hyperparameters` maps a module class to the names of its
// attributes that the fold reads; `mode_sensitive` holds the classes whose
// output depends on train/eval mode.  hooked/training: the first submodule
// with hooks / the first mode-sensitive one in train mode, or None.  keep_alive: every submodule, parameter and
// buffer, for the caller to hold, so that the identities hashed stay unique.
PyObject* model_state(PyObject*, PyObject* args) {
  PyObject *model, *hyper, *mode_sensitive;
  int read_content = 1;
  if (!PyArg_ParseTuple(args, "OO!O!|p", &model, &PyDict_Type, &hyper, &PyDict_Type, &mode_sensitive, &read_content))
    return nullptr;
  // Interned once: PyDict_GetItemString would make a string object on every lookup.
  static PyObject* const kTraining = PyUnicode_InternFromString("training");
  static PyObject* const kParameters = PyUnicode_InternFromString("_parameters");
  static PyObject* const kBuffers = PyUnicode_InternFromString("_buffers");
  static PyObject* const kModules = PyUnicode_InternFromString("_modules");
  static PyObject* const kHookDicts[] = {
      PyUnicode_InternFromString("_forward_hooks"), PyUnicode_InternFromString("_forward_pre_hooks"),
      PyUnicode_InternFromString("_backward_hooks"), PyUnicode_InternFromString("_backward_pre_hooks")};
  static TouchList touch;  // (the GIL serializes model_state calls)
  touch.start(model);
  TensorDigest digest;
  digest.read_content = read_content;
  digest.touch = &touch;
  uint64_t structure = 0x84222325CBF29CE4ull;
  PyObject *hooked = Py_None, *training = Py_None;
  PyObject* keep = PyList_New(0);
  if (!keep) return nullptr;
  std::vector<PyObject*> stack{model};  // borrowed: every module is held by its parent's _modules
  bool ok = true;
  auto add_tensors = [&](PyObject* d, PyObject* name) {
    PyObject* tensors = PyDict_GetItem(d, name);
    if (!tensors || !PyDict_Check(tensors)) return;
    touch.add_dict(tensors);
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (ok && PyDict_Next(tensors, &pos, &key, &value)) {
      ok = digest.add(value) && PyList_Append(keep, value) == 0;
    }
    mix(structure, static_cast<uint64_t>(PyDict_Size(tensors)));
  };
  while (ok && !stack.empty()) {
    PyObject* m = stack.back();
    stack.pop_back();
    if (m == Py_None) {
      mix(structure, 0);
      continue;
    }
    PyObject** dict_ptr = _PyObject_GetDictPtr(m);
    if (!dict_ptr || !*dict_ptr) {
      PyErr_Format(PyExc_TypeError, "model_state: %s has no __dict__", Py_TYPE(m)->tp_name);
      ok = false;
      break;
    }
    PyObject* d = *dict_ptr;
    touch.add_lines(m, 64);
    touch.add_dict(d, 12);  // (a module's __dict__: ~30 names)
    // (The model itself stays out of keep_alive: the cache it owns must not keep it alive.)
    if (m != model) {
      mix(structure, reinterpret_cast<uintptr_t>(m));
      if (PyList_Append(keep, m) < 0) ok = false;
    }
    mix(structure, reinterpret_cast<uintptr_t>(Py_TYPE(m)));
    PyObject* is_training = PyDict_GetItem(d, kTraining);
    const bool in_train = is_training == Py_True;
    mix(structure, in_train);
    PyObject* names = PyDict_GetItem(hyper, reinterpret_cast<PyObject*>(Py_TYPE(m)));
    if (names && PyTuple_Check(names)) {
      for (Py_ssize_t i = 0; ok && i < PyTuple_GET_SIZE(names); ++i) {
        PyObject* v = PyDict_GetItem(d, PyTuple_GET_ITEM(names, i));
        if (v) touch.add(v);
        const Py_hash_t hv = v ? PyObject_Hash(v) : 0;
        if (hv == -1 && PyErr_Occurred()) ok = false;
        mix(structure, static_cast<uint64_t>(hv));
      }
    }
    add_tensors(d, kParameters);
    add_tensors(d, kBuffers);
    if (m != model) {
      if (hooked == Py_None) {
        for (PyObject* name : kHookDicts) {
          PyObject* hooks = PyDict_GetItem(d, name);
          if (hooks) touch.add_lines(hooks, 64);
          if (hooks && PyDict_Check(hooks) && PyDict_Size(hooks) > 0) {
            hooked = m;
            break;
          }
        }
      }
      if (training == Py_None && in_train && PyDict_Contains(mode_sensitive, reinterpret_cast<PyObject*>(Py_TYPE(m))) == 1)
        training = m;
    }
    PyObject* children = PyDict_GetItem(d, kModules);
    if (children && PyDict_Check(children)) {  // pushed in reverse: visited in module order
      touch.add_dict(children);
      const size_t first = stack.size();
      PyObject *key, *value;
      Py_ssize_t pos = 0;
      while (PyDict_Next(children, &pos, &key, &value)) stack.push_back(value);
      std::reverse(stack.begin() + first, stack.end());
    }
  }
  if (!ok) {
    Py_DECREF(keep);
    return nullptr;
  }
  uint64_t h = digest.digest();
  mix(h, structure);
  return Py_BuildValue("(KOOOON)", static_cast<unsigned long long>(h), digest.any_grad ? Py_True : Py_False,
                       digest.cacheable ? Py_True : Py_False, hooked, training, keep);
}

PyObject* program_table() {
  PyObject* opcodes = PyTuple_New(mnv3::kNumOpcodes);
  for (int64_t i = 0; i < mnv3::kNumOpcodes; ++i) {
    const auto& op = mnv3::kOpcodes[i];
    PyTuple_SET_ITEM(opcodes, i, Py_BuildValue("(sLL)", op.name, static_cast<long long>(op.num_args),
                                               static_cast<long long>(op.act_arg)));
  }
  PyObject* acts = PyTuple_New(mnv3::kNumActs);
  for (int64_t i = 0; i < mnv3::kNumActs; ++i) PyTuple_SET_ITEM(acts, i, PyUnicode_FromString(mnv3::kActNames[i]));
  PyObject* table = Py_BuildValue("{sNsN}", "opcodes", opcodes, "activations", acts);
  return table;
}

// pack_pointwise(weight) -> the PWCONV instruction's packed weight (ops.h: pack_pointwise_weight).
PyObject* pack_pointwise(PyObject*, PyObject* arg) {
  HANDLE_TH_ERRORS
  if (!THPVariable_Check(arg)) {
    PyErr_Format(PyExc_TypeError, "pack_pointwise: expected a tensor, got %s", Py_TYPE(arg)->tp_name);
    return nullptr;
  }
  return THPVariable_Wrap(mnv3::pack_pointwise_weight(THPVariable_Unpack(arg)));
  END_HANDLE_TH_ERRORS
}

// The dtypes whose 1x1 convs the CPU program runs as PWCONV (int8: QPWCONV) on this build and CPU.
PyObject* pointwise_dtypes() {
  const std::pair<bool, const char*> dtypes[] = {{mnv3::pointwise_supported(at::kFloat), "float32"},
                                                  {mnv3::pointwise_supported(at::kBFloat16), "bfloat16"},
                                                  {mnv3::pointwise_int8_supported(), "int8"}};
  PyObject* names = PyList_New(0);
  for (const auto& [supported, name] : dtypes) {
    if (!supported) continue;
    PyObject* s = PyUnicode_FromString(name);
    PyList_Append(names, s);
    Py_DECREF(s);
  }
  PyObject* t = PyList_AsTuple(names);
  Py_DECREF(names);
  return t;
}

PyMethodDef methods[] = {
    {"pack_pointwise", pack_pointwise, METH_O, "pack_pointwise(weight) -> the PWCONV instruction's packed weight"},
    {"fingerprint", fingerprint, METH_O, "fingerprint(tensors) -> (hash, any_requires_grad, cacheable)"},
    {"model_state", model_state, METH_VARARGS,
     "model_state(model, hyperparameters, mode_sensitive, read_content=True) -> (hash, any_requires_grad, cacheable, "
     "hooked, training, keep_alive)"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef mnv3_module = {PyModuleDef_HEAD_INIT, "_C", "mnv3_fast C++ CPU kernels", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&mnv3_module);
  if (m && (PyModule_AddObject(m, "PROGRAM_TABLE", program_table()) < 0 ||
            PyModule_AddObject(m, "POINTWISE_DTYPES", pointwise_dtypes()) < 0)) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
