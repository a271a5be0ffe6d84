# scikit-learn reference for `masterkey bench kmeans`: KMeans on the same
# normalised filters, from the same initial centroids, for the same number of
# iterations, timed around fit() only.
import json, sys, time
import numpy as np
import sklearn
from sklearn.cluster import KMeans

data_path, init_path, n, taps, k, max_iter, repeats = sys.argv[1:8]
n, taps, k, max_iter, repeats = int(n), int(taps), int(k), int(max_iter), int(repeats)
X = np.fromfile(data_path, dtype=np.float32).reshape(n, taps)
init = np.fromfile(init_path, dtype=np.float32).reshape(k, taps)

out = {"sklearn": sklearn.__version__, "numpy": np.__version__}
for algorithm in ("lloyd", "elkan"):
    times, iters = [], []
    for _ in range(repeats):
        km = KMeans(n_clusters=k, init=init, n_init=1, max_iter=max_iter, tol=0.0, algorithm=algorithm)
        t0 = time.perf_counter()
        km.fit(X)
        times.append(time.perf_counter() - t0)
        iters.append(int(km.n_iter_))
    out[algorithm] = {"times_s": times, "iterations": iters}
print(json.dumps(out))
