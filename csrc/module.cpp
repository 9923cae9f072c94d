// The Python module `mnv3_fast._C`.  Importing it runs the static
// TORCH_LIBRARY_IMPL registrations of the CPU kernels; the op schemas
// themselves are defined once, in Python (mnv3_fast/ops/_library.py), so the
// package works the same with and without this extension.
#include <Python.h>

static PyModuleDef mnv3_module = {PyModuleDef_HEAD_INIT, "_C", "mnv3_fast C++ CPU kernels", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&mnv3_module); }
