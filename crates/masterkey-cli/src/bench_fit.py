# NumPy reference for `masterkey bench fit`: the same arithmetic as
# masterkey_core::fit::fit_filters (mean, centred norm, dot with every key,
# best |cos|, a, b), timed over several repeats on the same data.
import json, sys, time
import numpy as np

data_path, keys_path, n, taps, k, repeats, best_path = sys.argv[1:8]
n, taps, k, repeats = int(n), int(taps), int(k), int(repeats)
Y = np.fromfile(data_path, dtype=np.float32).reshape(n, taps)
X = np.fromfile(keys_path, dtype=np.float32).reshape(k, taps)

def fit(Y, X):
    b = Y.mean(axis=1, keepdims=True)
    Yc = Y - b
    norm = np.sqrt(np.einsum("ij,ij->i", Yc, Yc))
    D = Yc @ X.T
    absd = np.abs(D)
    best = absd.argmax(axis=1)
    rows = np.arange(len(Y))
    a = D[rows, best]
    cos = absd[rows, best] / norm
    return best, a, b[:, 0], cos

times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    best, a, b, cos = fit(Y, X)
    times.append(time.perf_counter() - t0)
best.astype(np.uint16).tofile(best_path)
print(json.dumps({"times_s": times, "numpy": np.__version__}))
