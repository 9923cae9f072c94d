# ab.sh OLD_DIR NEW_DIR rounds args...
here=$(cd "$(dirname "$0")" && pwd)
old=$1; new=$2; rounds=$3; shift 3
for r in $(seq $rounds); do
  echo "old $(cd $old && PYTHONPATH=$old python $here/opsum.py "$@" 2>/dev/null | tail -1)"
  echo "new $(cd $new && PYTHONPATH=$new python $here/opsum.py "$@" 2>/dev/null | tail -1)"
done
