# Run on the device machine from the repository root, with .whl (datasets, kornia, evaluate wheels for its
# Python 3.12) and .devdata/fashion-mnist (the IDX files) carried; tables land in $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf PYTHONUNBUFFERED=1
mkdir -p /usr/share/datasets/fashion-mnist && cp .devdata/fashion-mnist/* /usr/share/datasets/fashion-mnist/
cp -r scripts/results/fashion-mnist/partial/dm-seed0/proxy-cache /tmp/pc
for w in 0 20; do python3 scripts/results/fashion-mnist/partial/h200/profile-on-h200.py $w > $OUT/run-lambda$w.log 2>&1; grep "s/it over" $OUT/run-lambda$w.log; tail -3 $OUT/run-lambda$w.log; done
head -30 $OUT/profile-lambda0-self_cpu_time_total.txt | cut -c1-200
