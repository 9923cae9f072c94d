// The CPU program's instruction set and the activation codes, as the C++
// runner knows them.  The source of truth is Python
// (mnv3_fast/ops/cpu_program.py: OPCODES, ACTIVATIONS); the extension exports
// these tables (mnv3_fast._C.PROGRAM_TABLE) and a test checks that both agree.
#pragma once

#include <cstdint>

namespace mnv3 {

enum Opcode : int64_t {
  kSave, kConv, kDw, kSe, kAffine, kAct, kMark, kPool, kLinear, kStem,
  kQStem, kQConv, kQDw, kQSe, kQPool,  // the int8 program's
  kPwConv, kQPwConv,
  kNumOpcodes
};

struct OpcodeInfo {
  const char* name;
  int64_t num_args;
  int64_t act_arg;  // which argument is an activation code (-1: none)
};

constexpr OpcodeInfo kOpcodes[kNumOpcodes] = {
    {"SAVE", 0, -1}, {"CONV", 6, 4}, {"DW", 6, 5},   {"SE", 4, -1},     {"AFFINE", 2, -1},
    {"ACT", 1, 0},   {"MARK", 1, -1}, {"POOL", 0, -1}, {"LINEAR", 4, 2}, {"STEM", 5, 4},
    {"QSTEM", 6, 4}, {"QCONV", 9, 6}, {"QDW", 7, 5},  {"QSE", 5, -1},    {"QPOOL", 1, -1},
    {"PWCONV", 4, 2}, {"QPWCONV", 5, 2},
};

// Activation codes (enum class Act in common.h follows this order).
constexpr const char* kActNames[] = {"none", "relu", "hswish"};
constexpr int64_t kNumActs = 3;

}  // namespace mnv3
