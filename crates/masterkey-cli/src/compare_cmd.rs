use anyhow::Result;
use masterkey_core::Bank;
use masterkey_search::compare;

use crate::{print_json, ui};

#[derive(clap::Args)]
pub struct Args {
    /// First bank: a built-in name (published8) or a bank file.
    bank_a: String,
    /// Second bank, matched key to key against the first.
    bank_b: String,
    /// Also try the 8 symmetries of the square (rotations, flips, transposes) on B's keys.
    #[arg(long)]
    symmetries: bool,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let a = Bank::resolve(&args.bank_a)?;
    let b = Bank::resolve(&args.bank_b)?;
    let cmp = compare(&a, &b, args.symmetries);
    if args.json {
        return print_json(&cmp);
    }
    println!(
        "Bank A `{}` ({} keys, {}) against bank B `{}` ({} keys, {}), compared at {}{}.",
        a.name,
        a.len(),
        a.kernel,
        b.name,
        b.len(),
        b.kernel,
        cmp.kernel,
        if a.kernel == b.kernel { String::new() } else { format!(" (resized by the rule {})", cmp.resize_rule) }
    );
    println!(
        "One-to-one matching maximising the total |cos|; the sign is free{}.\n",
        if cmp.symmetries { ", B's keys may be rotated, flipped or transposed" } else { "" }
    );
    let mut t = ui::table(&["key A", "key B", "|cos|", "sign", "symmetry applied to B"]);
    for p in &cmp.pairs {
        t.add_row(vec![
            comfy_table::Cell::new(&p.label_a),
            comfy_table::Cell::new(&p.label_b),
            ui::num(format!("{:.4}", p.abs_cos)),
            ui::num(if p.sign < 0 { "-" } else { "+" }),
            comfy_table::Cell::new(p.symmetry.name()),
        ]);
    }
    println!("{t}");
    println!("mean matched |cos|: {:.4}", cmp.mean_abs_cos);
    for (side, keys) in [("A", &cmp.unmatched_a), ("B", &cmp.unmatched_b)] {
        if !keys.is_empty() {
            println!("unmatched keys of {side}: {}", keys.join(", "));
        }
    }
    Ok(())
}
