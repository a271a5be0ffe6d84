//! Renders a report from a small results folder made here, and checks its
//! structure, its embedded images and its numbers.

use std::fs;
use std::path::Path;

use base64::Engine;
use masterkey_core::fit::{save_fits_csv, FitRecord, RandomControl};
use masterkey_core::{fit_set, Bank, DwLayer, FilterSet, FitOptions, KernelSize, ModelFilters};
use masterkey_render::FilterGrid;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Two models: one made of noisy published keys (well covered), one of noise.
fn results_folder(dir: &Path) -> FitRecord {
    let bank = Bank::published8();
    let mut seed = 11;
    let keyed: Vec<f32> =
        (0..40).flat_map(|c| bank.key(c % 8).to_vec()).map(|v| 2.0 * v + 0.05 * lcg(&mut seed)).collect();
    let noise: Vec<f32> = (0..30 * 9).map(|_| lcg(&mut seed)).collect();
    let keyed_model = ModelFilters {
        source: "/models/keyed.safetensors".into(),
        format: "safetensors".into(),
        layers: vec![
            DwLayer::new("a", KernelSize::square(7), 20, keyed[..20 * 49].to_vec()).unwrap(),
            DwLayer::new("b", KernelSize::square(7), 20, keyed[20 * 49..].to_vec()).unwrap(),
        ],
    };
    let noise_model = ModelFilters {
        source: "/models/noise.onnx".into(),
        format: "onnx".into(),
        layers: vec![DwLayer::new("n", KernelSize::square(3), 30, noise).unwrap()],
    };
    let mut set = FilterSet::default();
    set.add_model(&keyed_model);
    set.add_model(&noise_model);
    let (fits, report) = fit_set(&set, &bank, &FitOptions::default());
    let record = FitRecord {
        inputs: vec!["/models/keyed.safetensors".into(), "/models/noise.onnx".into()],
        dead_tolerance: set.dead_tolerance,
        random_control: Some(RandomControl::compute(&set, &bank, &FitOptions::default(), 5)),
        report,
    };
    fs::create_dir_all(dir.join("fit")).unwrap();
    fs::write(dir.join("fit/fit.json"), serde_json::to_vec(&record).unwrap()).unwrap();
    save_fits_csv(&set, &fits, &bank, &dir.join("fit/fits.csv")).unwrap();
    let models = serde_json::json!([
        {"source": "/models/keyed.safetensors", "format": "safetensors", "layers": 2, "filters": 40, "kernels": {"7x7": 40}},
        {"source": "/models/noise.onnx", "format": "onnx", "layers": 1, "filters": 30, "kernels": {"3x3": 30}}
    ]);
    fs::write(dir.join("models.json"), models.to_string()).unwrap();
    let keys: Vec<&[f32]> = (0..8).map(|i| bank.key(i)).collect();
    FilterGrid { kernel: bank.kernel, filters: keys, columns: 8 }.save_png(&dir.join("bank_published8.png")).unwrap();
    let scale_fit = masterkey_scalespace::fit_bank(&bank, &masterkey_scalespace::FitOptions::default()).unwrap();
    fs::create_dir_all(dir.join("scalespace")).unwrap();
    fs::write(dir.join("scalespace/fit.json"), serde_json::to_vec(&scale_fit).unwrap()).unwrap();

    let filters = masterkey_search::NormalisedFilters::from_group(&set.groups[&KernelSize::square(7)]);
    let options = masterkey_search::SearchOptions {
        method: masterkey_search::Method::KMeans(Default::default()),
        k: masterkey_search::KChoice::Fixed(8),
        max_k: 10,
        thresholds: FitOptions::default().thresholds,
    };
    let outcome = masterkey_search::search(&filters, "test", &options, None, &|_, _, _| {}).unwrap();
    fs::create_dir_all(dir.join("search")).unwrap();
    fs::write(dir.join("search/kmeans-7x7.curve.json"), serde_json::to_vec(&outcome.curve).unwrap()).unwrap();
    let comparison = masterkey_search::compare(&outcome.bank, &bank, false);
    fs::write(dir.join("search/kmeans-7x7.compare.json"), serde_json::to_vec(&comparison).unwrap()).unwrap();

    // The shape `masterkey experiment small-data` writes.
    let experiment = serde_json::json!({
        "model": "convnextv2-atto", "dataset": "fashion-mnist", "batch_size": 64, "lr": 0.002,
        "layer_scale_init": null, "eval_every": 1, "seeds": [1, 2],
        "shares": [{"fraction": 0.01, "epochs": 2, "freeze_after": 1}], "training_seconds": 12.5,
        "stats": [
            {"arm": "trainable", "fraction": 0.01, "runs": 2, "mean": 0.7012, "std": 0.01, "min": 0.69, "max": 0.71,
             "vs_trainable": 0.0, "mean_curve": [0.6, 0.7012]},
            {"arm": "frozen/round-robin", "fraction": 0.01, "runs": 2, "mean": 0.7234, "std": 0.02, "min": 0.70, "max": 0.74,
             "vs_trainable": 0.0222, "paired": {"pairs": 2, "mean": 0.0222, "low": -0.01, "high": 0.0544},
             "mean_curve": [0.65, 0.7234]}
        ],
        "runs": []
    });
    fs::create_dir_all(dir.join("small-data")).unwrap();
    fs::write(dir.join("small-data/results.json"), experiment.to_string()).unwrap();
    // A second experiment, on photos, with a scale-space arm.
    let mut photos = experiment.clone();
    photos["dataset"] = "photos".into();
    photos["learned_scales"] = serde_json::json!([{
        "fraction": 0.01, "runs": 2, "bank": "published8", "discretisation": "sampled",
        "fitted_to_keys": [{"family": "sharpen", "channels": 1, "sigma_x": 0.605, "sigma_y": 0.534, "alpha": 0.551}],
        "learned": [{"family": "sharpen", "channels": 48, "sigma_x": 0.71, "sigma_y": 0.52, "alpha": 0.6}]
    }]);
    fs::create_dir_all(dir.join("small-data-photos")).unwrap();
    fs::write(dir.join("small-data-photos/results.json"), photos.to_string()).unwrap();
    fs::create_dir_all(dir.join("train")).unwrap();
    // Epoch 2 was not evaluated (`--eval-every 3`): no test fields.
    let metrics = [(1, 0.8, 0.61, true), (2, 0.6, 0.75, false), (3, 0.5, 0.83, true)]
        .map(|(epoch, loss, acc, evaluated)| {
            let mut line = serde_json::json!({"epoch": epoch, "step": 10 * epoch, "lr": 0.001, "train_loss": loss,
                "train_accuracy": acc, "train_images_per_s": 123.4, "dw_frozen": true, "dw_filter_norm": 1.0});
            if evaluated {
                line["test_loss"] = serde_json::json!(loss + 0.1);
                line["test_accuracy"] = serde_json::json!(acc - 0.01);
            }
            line.to_string()
        })
        .join("\n");
    fs::write(dir.join("train/metrics.jsonl"), metrics).unwrap();
    fs::write(
        dir.join("small-data/curves-1.svg"),
        "<svg xmlns=\"http://www.w3.org/2000/svg\"><line x1=\"0\" y1=\"0\" x2=\"9\" y2=\"9\"/></svg>",
    )
    .unwrap();
    record
}

#[test]
fn report_has_its_sections_images_and_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let record = results_folder(dir.path());
    let out = dir.path().join("report.html");
    let report = masterkey_report::write(dir.path(), &out).unwrap();
    assert_eq!(
        report.sections,
        vec![
            "Models and filters",
            "Banks",
            "How the bank explains the filters",
            "Scale-space models of the keys",
            "Banks found in the filters",
            "Frozen versus trainable on small data: fashion-mnist",
            "Frozen versus trainable on small data: photos",
            "Training run"
        ]
    );
    let html = fs::read_to_string(&out).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    for outside in ["<script", "<link", "src=\"http", "href=\"http", "url("] {
        assert!(!html.contains(outside), "self-contained, yet holds {outside}");
    }

    // Every embedded image decodes as a PNG; the bank picture has 8 cells in a row.
    let images: Vec<&str> = html.split("data:image/png;base64,").skip(1).map(|s| &s[..s.find('"').unwrap()]).collect();
    assert_eq!(images.len(), 1);
    for data in images {
        let bytes = base64::engine::general_purpose::STANDARD.decode(data).unwrap();
        let info = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap().info().clone();
        assert!(info.width > 8 * info.height / 2, "{}x{}", info.width, info.height);
    }
    // Charts: coverage curve, one usage-by-depth map per model, coverage versus K.
    assert_eq!(html.matches("<svg").count(), 7);
    assert!(html.contains("final test accuracy 82.00%"));
    assert!(html.contains("<td>frozen/round-robin</td>") && html.contains("<td class=\"num\">72.34</td>"));
    assert!(html.contains("<td class=\"num\">+2.22</td>"));
    assert!(html.contains("+2.22 (-1.00 to +5.44; 2 seeds)"), "paired difference with its interval");
    assert!(html.contains("mean matched |cos|"));
    assert!(html.contains("<td class=\"num\">0.605 / 0.534, alpha 0.551</td>"), "the sigmas fitted to the keys");
    assert!(html.contains("<td class=\"num\">0.710 / 0.520, alpha 0.600 (48 channels)</td>"), "the learned sigmas");

    // Numbers: the coverage table shows what fit.json holds.
    let overall = &record.report.overall;
    let at_08 = format!("{:.1}%", 100.0 * overall.coverage["0.8"]);
    let keyed = &record.report.per_model["/models/keyed.safetensors"];
    assert_eq!(keyed.coverage["0.95"], 1.0);
    assert!(html.contains(&at_08), "overall coverage {at_08} is shown");
    assert!(html.contains(&format!("<td class=\"num\">{:.3}</td>", overall.mean_abs_cos)));
    assert!(html.contains("keyed.safetensors") && html.contains("noise.onnx") && html.contains("centre-crop"));
    assert!(html.contains("CC BY 4.0"));
    let control = record.random_control.as_ref().unwrap();
    assert!(html.contains("<td>control: random8-seed5</td>"));
    assert!(html.contains(&format!("<td class=\"num\">{:.3}</td>", control.overall.mean_abs_cos)));
    // The scale-space table names each key's family.
    for family in ["offset-down", "sharpen", "gauss"] {
        assert!(html.contains(&format!("<td>{family}</td>")), "{family}");
    }
}

#[test]
fn missing_empty_and_corrupt_folders_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = masterkey_report::render(&dir.path().join("nope")).err().unwrap().to_string();
    assert!(err.contains("nope"), "{err}");
    let err = masterkey_report::render(dir.path()).err().unwrap().to_string();
    assert!(err.contains("found none"), "{err}");
    fs::create_dir_all(dir.path().join("fit")).unwrap();
    fs::write(dir.path().join("fit/fit.json"), b"{\"inputs\": 3}").unwrap();
    let err = masterkey_report::render(dir.path()).err().unwrap().to_string();
    assert!(err.contains("fit.json"), "{err}");
    let out = dir.path().join("r.html");
    assert!(masterkey_report::write(dir.path(), &out).is_err());
    assert!(!out.exists(), "no partial report");
}
