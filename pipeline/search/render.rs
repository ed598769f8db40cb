//! The tree as indented text (what `cotforge inspect-tree` prints).

use std::fmt::Write as _;

use super::result::TreeExport;
use super::tree::NodeId;

fn preview(text: &str, width: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c == '\n' { '⏎' } else { c })
        .collect();
    let n = flat.chars().count();
    if n <= width {
        flat
    } else {
        let s: String = flat.chars().take(width.saturating_sub(1)).collect();
        format!("{s}…")
    }
}

/// The tree as indented text: N, Q and reward per node, `*` on the best path.
pub fn render_tree(t: &TreeExport, width: usize, max_depth: Option<usize>) -> String {
    let mut s = String::new();
    let chains = t.nodes.iter().filter(|n| n.answer.is_some()).count();
    let _ = writeln!(
        s,
        "seed {}  nodes {}  terminal {}  stop {:?}",
        t.seed_id,
        t.nodes.len(),
        chains,
        t.stop
    );
    let _ = writeln!(s, "prompt: {}", preview(&t.prompt, width + 20));
    if let Some(r) = &t.reference_answer {
        let _ = writeln!(s, "reference: {}", preview(r, width));
    }
    let best: std::collections::BTreeSet<_> = t.best_path.iter().copied().collect();
    // Iterative DFS, children in order.
    let mut stack = vec![(NodeId::ROOT, 0usize)];
    while let Some((id, depth)) = stack.pop() {
        let Some(n) = t.nodes.get(id.0 as usize) else {
            continue;
        };
        let mark = if best.contains(&id) { '*' } else { ' ' };
        let indent = "  ".repeat(depth);
        let mut line = format!("{mark}{indent}[{}] N={} Q={:.3}", n.id.0, n.n, n.q);
        if !n.confidences.is_empty() {
            let c =
                n.confidences.iter().map(|&c| c as f64).sum::<f64>() / n.confidences.len() as f64;
            let _ = write!(line, " c={c:.3}");
        }
        if n.reflection {
            line.push_str(" [reflection]");
        }
        if id.0 == 0 {
            line.push_str(" (prompt)");
        } else {
            let _ = write!(line, " \"{}\"", preview(&n.text, width));
        }
        if let Some(a) = &n.answer {
            let v = match a.verified {
                Some(true) => " ok",
                Some(false) => " wrong",
                None => "",
            };
            let _ = write!(
                line,
                "  => \"{}\" r={:.3}{v} ({:?})",
                preview(&a.text, 30),
                a.reward,
                n.terminal
            );
        }
        let _ = writeln!(s, "{line}");
        if max_depth.is_none_or(|m| depth < m) {
            for &c in n.children.iter().rev() {
                stack.push((c, depth + 1));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CoreLimits, ScriptedConfig, ScriptedEngine};
    use crate::recipes::marco::tree_file_stem;
    use crate::record::Seed;
    use crate::search::{default_verifier, run_many, DriverConfig, SearchConfig, TreeSearch};

    #[test]
    fn render_marks_the_best_path() {
        let mut e = ScriptedEngine::scripted(
            ScriptedConfig::default(),
            CoreLimits {
                n_ctx: 1 << 20,
                n_batch: 4096,
                n_parallel: 4,
                n_seq_max: 16,
            },
        );
        let seed = Seed {
            id: "s/1".into(),
            prompt: "Add 2 and 3.".into(),
            reference_answer: Some("5".into()),
            ..Default::default()
        };
        let cfg = SearchConfig {
            max_rollouts: 4,
            ..Default::default()
        };
        let t = TreeSearch::new(&e, &seed, &cfg, default_verifier()).unwrap();
        let (r, _) = run_many(&mut e, vec![t], &DriverConfig::default(), &mut |_, _| {}).unwrap();
        let json = r[0].tree.to_json();
        let back: TreeExport = serde_json::from_str(&json).unwrap();
        let out = render_tree(&back, 40, None);
        let starred = out.lines().filter(|l| l.starts_with('*')).count();
        assert_eq!(starred, back.best_path.len());
        assert_eq!(
            out.lines()
                .filter(|l| l.contains("[") && l.contains("N="))
                .count(),
            back.nodes.len()
        );
        assert_eq!(tree_file_stem("s/1"), "s_1");
    }
}
