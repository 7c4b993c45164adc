//! Prints fleetscore's CRDs as YAML, or writes them to `crds/*.yaml` with `--write DIR`.

use std::path::PathBuf;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [] => None,
        [flag, dir] if flag == "--write" => Some(PathBuf::from(dir)),
        _ => anyhow::bail!("usage: crdgen [--write DIR]"),
    };
    for (file, crd) in fleetscore_operator::crd::all() {
        let yaml = fleetscore_operator::crd::to_yaml(&crd)?;
        match &dir {
            Some(dir) => {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}
