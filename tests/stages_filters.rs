//! Filters on real-looking chains: each filter keeps good chains and rejects
//! bad ones with its stage name and a reason.

use std::collections::HashMap;

use cotforge::record::{Chain, Recipe};
use cotforge::stages::filter::{
    FilterChain, FilterConfig, FilterContext, FormatConfig, LanguageConfig, LengthConfig,
    RepetitionConfig, RewardConfig, VerifyConfig,
};
use cotforge::stages::{answers_match, check_format, extract_final_answer, render, Style};

fn chain(id: &str, reasoning: &str, answer: &str) -> Chain {
    Chain {
        id: id.into(),
        seed_id: format!("gsm8k-{id}"),
        recipe: Some(Recipe::MarcoCot),
        prompt: "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?".into(),
        reasoning: reasoning.into(),
        answer: answer.into(),
        reward: 0.8,
        step_confidences: vec![0.8, 0.85, 0.75],
        tokens: 120,
        ..Default::default()
    }
}

const GOOD_REASONING: &str = "In April she sold 48 clips.\n\nIn May she sold half as many: 48 / 2 = 24 clips.\n\nAltogether 48 + 24 = 72 clips.";

fn one(cfg: FilterConfig) -> FilterChain {
    FilterChain::from_configs(&[cfg]).expect("valid config")
}

#[test]
fn gsm8k_reference_in_many_written_forms() {
    let reference = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 1234";
    let forms = [
        "$1,234",
        "1234.00",
        "1,234 dollars",
        "\\boxed{1234}",
        "#### 1234",
        "The answer is $1,234.",
        "Final answer: 1234",
        "She has 1,234 clips in total.",
    ];
    let verify = one(FilterConfig::Verify(VerifyConfig::default()));
    for (i, f) in forms.iter().enumerate() {
        assert!(answers_match(f, reference), "{f}");
        let mut c = chain(&format!("c{i}"), GOOD_REASONING, f);
        c.reference_answer = Some(reference.into());
        let (kept, rej) = verify.apply(vec![c]);
        assert_eq!(rej.len(), 0, "{f}: {rej:?}");
        assert_eq!(kept[0].verified, Some(true));
    }
    // wrong answers, including near misses
    for f in ["$1,243", "123.4", "12,34", "\\boxed{1235}", "#### 72"] {
        let mut c = chain("bad", GOOD_REASONING, f);
        c.reference_answer = Some(reference.into());
        let (kept, rej) = verify.apply(vec![c]);
        assert!(kept.is_empty(), "{f} should be rejected");
        assert_eq!(rej[0].stage, "filter.verify");
        assert!(
            rej[0].reason.contains("!= reference '1234'"),
            "{}",
            rej[0].reason
        );
        let row: Chain = serde_json::from_str(&rej[0].row).expect("row is the chain as JSON");
        assert_eq!(row.verified, Some(false));
    }
    assert!(answers_match("50%", "0.5"));
    assert!(answers_match("50%", "50"));
    assert!(answers_match("1/2", "0.5"));
    assert!(answers_match("0.5", "\\frac{1}{2}"));
    assert!(!answers_match("1/2", "0.25"));
    assert_eq!(
        extract_final_answer("blah\n#### 1,234\n").as_deref(),
        Some("1,234")
    );
}

#[test]
fn verify_without_reference_keeps_unless_required() {
    let c = chain("a", GOOD_REASONING, "72");
    let (kept, _) = one(FilterConfig::Verify(VerifyConfig::default())).apply(vec![c.clone()]);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].verified, None);
    let (kept, rej) = one(FilterConfig::Verify(VerifyConfig {
        require_reference: true,
    }))
    .apply(vec![c]);
    assert!(kept.is_empty());
    assert_eq!(rej[0].reason, "no reference answer");
}

#[test]
fn format_missing_repeated_misordered_tags() {
    let good = render(Style::Marco, GOOD_REASONING, "72");
    assert!(check_format(&good).is_ok());
    let bad = [
        ("missing output", "<Thought>\nthink\n</Thought>\n72"),
        ("missing close", "<Thought>\nthink\n<Output>\n72\n</Output>"),
        (
            "repeated",
            "<Thought>\na\n</Thought>\n<Thought>\nb\n</Thought>\n<Output>\n72\n</Output>",
        ),
        (
            "misordered",
            "<Output>\n72\n</Output>\n<Thought>\nthink\n</Thought>",
        ),
        ("nested", "<Thought>\na <Output>72</Output>\n</Thought>"),
        (
            "empty thought",
            "<Thought>\n\n</Thought>\n<Output>\n72\n</Output>",
        ),
    ];
    for (what, text) in bad {
        assert!(check_format(text).is_err(), "{what}");
    }

    let f = one(FilterConfig::Format(FormatConfig::default()));
    let leaked = chain(
        "leak",
        "Let me think.\n</Thought>\n<Output>\n71\n</Output>\n<Thought>\nagain",
        "72",
    );
    let empty = chain("empty", "  ", "72");
    let ok = chain("ok", GOOD_REASONING, "72");
    let (kept, rej) = f.apply(vec![leaked, empty, ok]);
    assert_eq!(
        kept.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["ok"]
    );
    assert_eq!(rej.len(), 2);
    assert!(rej.iter().all(|r| r.stage == "filter.format"));
    assert!(
        rej[0].reason.contains("appears 2 times"),
        "{}",
        rej[0].reason
    );
    assert_eq!(rej[1].reason, "empty reasoning");

    // instruction recipe: reasoning optional
    let f = one(FilterConfig::Format(FormatConfig {
        require_reasoning: false,
    }));
    let (kept, _) = f.apply(vec![chain("instr", "", "A haiku about rain.")]);
    assert_eq!(kept.len(), 1);
}

#[test]
fn looping_chain_is_rejected_for_repetition() {
    let looping = format!(
        "{} {}",
        "First, 48 / 2 = 24.",
        "Wait, let me compute 48 / 2 again. ".repeat(30)
    );
    let f = one(FilterConfig::Repetition(RepetitionConfig::default()));
    let (kept, rej) = f.apply(vec![
        chain("loop", &looping, "24"),
        chain("ok", GOOD_REASONING, "72"),
    ]);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].id, "ok");
    assert_eq!(rej[0].stage, "filter.repetition");
    assert!(
        rej[0].reason.starts_with("repeated 4-gram share"),
        "{}",
        rej[0].reason
    );
    let (share, _) = cotforge::stages::filter::repeated_ngram_share(&looping, 4);
    assert!(share > 0.8, "{share}");
}

#[test]
fn reward_mean_and_weakest_step() {
    let f = one(FilterConfig::Reward(RewardConfig {
        min_reward: 0.6,
        min_step_confidence: 0.3,
    }));
    let mut low = chain("low", GOOD_REASONING, "72");
    low.reward = 0.41;
    let mut weak = chain("weak", GOOD_REASONING, "72");
    weak.step_confidences = vec![0.9, 0.12, 0.9];
    let mut nan = chain("nan", GOOD_REASONING, "72");
    nan.reward = f64::NAN;
    let ok = chain("ok", GOOD_REASONING, "72");
    let (kept, rej) = f.apply(vec![low, weak, nan, ok]);
    assert_eq!(kept.len(), 1);
    assert_eq!(rej[0].reason, "reward 0.410 < 0.600");
    assert_eq!(rej[1].reason, "step 1 confidence 0.120 < 0.300");
    assert!(rej[2].reason.starts_with("reward NaN"), "{}", rej[2].reason);
    assert!(FilterConfig::Reward(RewardConfig {
        min_reward: 1.5,
        min_step_confidence: 0.0
    })
    .build()
    .is_err());
}

#[test]
fn length_bounds_in_tokens() {
    let f = one(FilterConfig::Length(LengthConfig {
        min_tokens: 10,
        max_tokens: 200,
    }));
    let mut short = chain("short", "ok", "1");
    short.tokens = 3;
    let mut long = chain("long", GOOD_REASONING, "72");
    long.tokens = 4000;
    let mut est = chain("estimated", &"word ".repeat(200), "72");
    est.tokens = 0; // estimated from text: ~1000 chars / 4
    let (kept, rej) = f.apply(vec![short, long, est, chain("ok", GOOD_REASONING, "72")]);
    assert_eq!(kept.len(), 1);
    assert_eq!(rej[0].reason, "tokens 3 < 10");
    assert_eq!(rej[1].reason, "tokens 4000 > 200");
    assert_eq!(rej[2].reason, "tokens 251 > 200");
}

#[test]
fn language_script_matches_seed_lang() {
    let f = one(FilterConfig::Language(LanguageConfig::default()));
    let mut ctx = FilterContext::default();
    let mut zh = chain(
        "zh-ok",
        GOOD_REASONING,
        "娜塔莉亚在四月和五月一共卖了七十二个夹子。",
    );
    zh.seed_id = "s-zh".into();
    let mut zh_en = chain(
        "zh-en",
        GOOD_REASONING,
        "Natalia sold seventy-two clips altogether.",
    );
    zh_en.seed_id = "s-zh".into();
    let mut ru = chain("ru-num", GOOD_REASONING, "72");
    ru.seed_id = "s-ru".into();
    let mut en = chain("en", GOOD_REASONING, "Всего Наталья продала 72 заколки.");
    en.seed_id = "s-en".into();
    let unknown = chain("nolang", GOOD_REASONING, "Всего 72.");
    ctx.seed_lang = HashMap::from([
        ("s-zh".to_string(), "zh".to_string()),
        ("s-ru".to_string(), "ru".to_string()),
        ("s-en".to_string(), "en-US".to_string()),
    ]);
    let (kept, rej) = f.apply_with(vec![zh, zh_en, ru, en, unknown], &ctx);
    let ids: Vec<_> = kept.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["zh-ok", "ru-num", "nolang"]);
    assert_eq!(rej.len(), 2);
    assert!(rej.iter().all(|r| r.stage == "filter.language"));
    assert!(rej[0].reason.contains("lang 'zh'"), "{}", rej[0].reason);
}

#[test]
fn chain_applies_in_order_and_config_roundtrips() {
    let toml_text = r#"
[[filters]]
type = "format"

[[filters]]
type = "repetition"
ngram = 4
max_repeated_share = 0.3

[[filters]]
type = "verify"

[[filters]]
type = "reward"
min_reward = 0.7
"#;
    #[derive(serde::Deserialize)]
    struct Recipe {
        filters: Vec<FilterConfig>,
    }
    let r: Recipe = toml::from_str(toml_text).expect("toml");
    assert_eq!(r.filters.len(), 4);
    let fc = FilterChain::from_configs(&r.filters).expect("build");
    let mut low_and_bad = chain("both", "x </Thought> y", "72");
    low_and_bad.reward = 0.1;
    let mut wrong = chain("wrong", GOOD_REASONING, "71");
    wrong.reference_answer = Some("72".into());
    let mut right = chain("right", GOOD_REASONING, "72 clips");
    right.reference_answer = Some("#### 72".into());
    let (kept, rej) = fc.apply(vec![low_and_bad, wrong, right]);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].verified, Some(true));
    // the first failing filter in list order names the rejection
    assert_eq!(rej[0].stage, "filter.format");
    assert_eq!(rej[1].stage, "filter.verify");
    assert!(toml::from_str::<Recipe>("[[filters]]\ntype = \"nope\"\n").is_err());
    assert!(toml::from_str::<Recipe>("[[filters]]\ntype = \"reward\"\nmin_rewrd = 0.5\n").is_err());
}
