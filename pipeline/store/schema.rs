//! Arrow schemas of the rows cotforge stores, and row <-> batch conversion.
//!
//! The JSON files in `schemas/` are the contract with training teams; the
//! Arrow schemas used at run time are *parsed from them* (compiled in with
//! `include_str!`), so code and documentation cannot drift: a builder that
//! produces a column the JSON does not describe fails `RecordBatch::try_new`,
//! and tests check every struct field in `record.rs` has a column.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
    UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use serde::Deserialize;

use super::{Result, StoreError};
use crate::record::{Chain, Recipe, Reject, Seed};

pub const SEEDS_JSON: &str = include_str!("../../schemas/seeds.json");
pub const CHAINS_JSON: &str = include_str!("../../schemas/chains.json");
pub const REJECTS_JSON: &str = include_str!("../../schemas/rejects.json");
pub const SFT_JSON: &str = include_str!("../../schemas/sft.json");
pub const PREFERENCE_JSON: &str = include_str!("../../schemas/preference.json");
pub const KTO_JSON: &str = include_str!("../../schemas/kto.json");
pub const PRM_JSON: &str = include_str!("../../schemas/prm.json");

/// A schema document of `schemas/*.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct SchemaDoc {
    pub name: String,
    pub version: u32,
    pub doc: String,
    pub fields: Vec<FieldDoc>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FieldDoc {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: TypeDoc,
    pub nullable: bool,
    #[serde(default)]
    pub doc: String,
}

/// `"utf8"`, `{"list": T, "item_nullable": b}` or `{"struct": [fields]}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TypeDoc {
    Prim(String),
    List {
        list: Box<TypeDoc>,
        #[serde(default)]
        item_nullable: bool,
    },
    Struct {
        #[serde(rename = "struct")]
        fields: Vec<FieldDoc>,
    },
}

impl TypeDoc {
    fn to_arrow(&self) -> Result<DataType> {
        Ok(match self {
            TypeDoc::Prim(s) => match s.as_str() {
                "utf8" => DataType::Utf8,
                "float64" => DataType::Float64,
                "float32" => DataType::Float32,
                "int64" => DataType::Int64,
                "int32" => DataType::Int32,
                "uint32" => DataType::UInt32,
                "uint64" => DataType::UInt64,
                "bool" => DataType::Boolean,
                other => return Err(StoreError::Schema(format!("unknown type `{other}`"))),
            },
            TypeDoc::List {
                list,
                item_nullable,
            } => DataType::List(Arc::new(Field::new_list_field(
                list.to_arrow()?,
                *item_nullable,
            ))),
            TypeDoc::Struct { fields } => DataType::Struct(Fields::from(
                fields
                    .iter()
                    .map(FieldDoc::to_arrow)
                    .collect::<Result<Vec<_>>>()?,
            )),
        })
    }
}

impl FieldDoc {
    fn to_arrow(&self) -> Result<Field> {
        let mut md = HashMap::new();
        if !self.doc.is_empty() {
            md.insert("doc".to_string(), self.doc.clone());
        }
        Ok(Field::new(&self.name, self.ty.to_arrow()?, self.nullable).with_metadata(md))
    }
}

impl SchemaDoc {
    pub fn parse(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| StoreError::Schema(e.to_string()))
    }
    /// The Arrow schema; schema-level metadata carries name and version.
    pub fn to_arrow(&self) -> Result<Schema> {
        let fields = self
            .fields
            .iter()
            .map(FieldDoc::to_arrow)
            .collect::<Result<Vec<_>>>()?;
        let md = HashMap::from([(
            "cotforge.schema".to_string(),
            format!("{}/v{}", self.name, self.version),
        )]);
        Ok(Schema::new(fields).with_metadata(md))
    }
}

fn cached(cell: &'static OnceLock<SchemaRef>, json: &'static str) -> SchemaRef {
    cell.get_or_init(|| {
        // The JSON is compiled in and covered by tests; failing here is a build defect.
        let s = SchemaDoc::parse(json)
            .and_then(|d| d.to_arrow())
            .unwrap_or_else(|e| panic!("built-in schema is invalid: {e}"));
        Arc::new(s)
    })
    .clone()
}

pub fn seeds_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    cached(&S, SEEDS_JSON)
}
pub fn chains_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    cached(&S, CHAINS_JSON)
}
pub fn rejects_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    cached(&S, REJECTS_JSON)
}
pub fn sft_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    cached(&S, SFT_JSON)
}
/// The preference export's rows; its batches are built against this schema.
pub fn preference_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    cached(&S, PREFERENCE_JSON)
}
/// The KTO export's rows.
pub fn kto_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    cached(&S, KTO_JSON)
}
/// The process-reward export's rows.
pub fn prm_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    cached(&S, PRM_JSON)
}

fn strs<'a, I: Iterator<Item = &'a str>>(it: I) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(it))
}
fn opt_strs<'a, I: Iterator<Item = Option<&'a str>>>(it: I) -> ArrayRef {
    Arc::new(it.collect::<StringArray>())
}

fn batch(schema: SchemaRef, cols: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(schema, cols).map_err(|e| StoreError::Schema(e.to_string()))
}

pub fn seeds_to_batch(rows: &[Seed]) -> Result<RecordBatch> {
    batch(
        seeds_schema(),
        vec![
            strs(rows.iter().map(|r| r.id.as_str())),
            strs(rows.iter().map(|r| r.prompt.as_str())),
            opt_strs(rows.iter().map(|r| r.system.as_deref())),
            opt_strs(rows.iter().map(|r| r.reference_answer.as_deref())),
            opt_strs(rows.iter().map(|r| r.response.as_deref())),
            opt_strs(rows.iter().map(|r| r.source.as_deref())),
            opt_strs(rows.iter().map(|r| r.lang.as_deref())),
            opt_strs(rows.iter().map(|r| r.meta.as_deref())),
        ],
    )
}

fn list_f64(schema: &Schema, name: &str, rows: &[&[f64]]) -> Result<ArrayRef> {
    let field = match schema.field_with_name(name).map(|f| f.data_type().clone()) {
        Ok(DataType::List(f)) => f,
        _ => return Err(StoreError::Schema(format!("`{name}` is not a list"))),
    };
    let values = Float64Array::from_iter_values(rows.iter().flat_map(|r| r.iter().copied()));
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| r.len()));
    ListArray::try_new(field, offsets, Arc::new(values), None)
        .map(|a| Arc::new(a) as ArrayRef)
        .map_err(|e| StoreError::Schema(e.to_string()))
}

pub fn chains_to_batch(rows: &[Chain]) -> Result<RecordBatch> {
    let schema = chains_schema();
    let confs: Vec<&[f64]> = rows.iter().map(|r| r.step_confidences.as_slice()).collect();
    let cols: Vec<ArrayRef> = vec![
        strs(rows.iter().map(|r| r.id.as_str())),
        strs(rows.iter().map(|r| r.seed_id.as_str())),
        opt_strs(rows.iter().map(|r| r.recipe.map(Recipe::as_str))),
        opt_strs(rows.iter().map(|r| r.system.as_deref())),
        strs(rows.iter().map(|r| r.prompt.as_str())),
        strs(rows.iter().map(|r| r.reasoning.as_str())),
        strs(rows.iter().map(|r| r.answer.as_str())),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.reward),
        )),
        list_f64(&schema, "step_confidences", &confs)?,
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.tokens))),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.reflections),
        )),
        Arc::new(rows.iter().map(|r| r.verified).collect::<BooleanArray>()),
        opt_strs(rows.iter().map(|r| r.reference_answer.as_deref())),
        strs(rows.iter().map(|r| r.model.as_str())),
        strs(rows.iter().map(|r| r.model_blake3.as_str())),
        strs(rows.iter().map(|r| r.settings.as_str())),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.created_at),
        )),
        Arc::new(rows.iter().map(|r| r.selected).collect::<BooleanArray>()),
        Arc::new(rows.iter().map(|r| r.value).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| r.agreement).collect::<Float64Array>()),
    ];
    batch(schema, cols)
}

pub fn rejects_to_batch(rows: &[Reject]) -> Result<RecordBatch> {
    batch(
        rejects_schema(),
        vec![
            strs(rows.iter().map(|r| r.seed_id.as_str())),
            opt_strs(rows.iter().map(|r| r.chain_id.as_deref())),
            opt_strs(rows.iter().map(|r| r.recipe.map(Recipe::as_str))),
            strs(rows.iter().map(|r| r.stage.as_str())),
            strs(rows.iter().map(|r| r.reason.as_str())),
            strs(rows.iter().map(|r| r.row.as_str())),
        ],
    )
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| StoreError::Schema(format!("column `{name}` missing or of another type")))
}

fn opt_s(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_string())
}

fn recipe(a: &StringArray, i: usize) -> Option<Recipe> {
    opt_s(a, i).and_then(|s| s.parse().ok())
}

/// Read back chains written by [`chains_to_batch`] (tests, merge, export).
pub fn batch_to_chains(b: &RecordBatch) -> Result<Vec<Chain>> {
    let id = col::<StringArray>(b, "id")?;
    let seed_id = col::<StringArray>(b, "seed_id")?;
    let rec = col::<StringArray>(b, "recipe")?;
    let system = col::<StringArray>(b, "system")?;
    let prompt = col::<StringArray>(b, "prompt")?;
    let reasoning = col::<StringArray>(b, "reasoning")?;
    let answer = col::<StringArray>(b, "answer")?;
    let reward = col::<Float64Array>(b, "reward")?;
    let confs = col::<ListArray>(b, "step_confidences")?;
    let tokens = col::<UInt32Array>(b, "tokens")?;
    let reflections = col::<UInt32Array>(b, "reflections")?;
    let verified = col::<BooleanArray>(b, "verified")?;
    let reference = col::<StringArray>(b, "reference_answer")?;
    let model = col::<StringArray>(b, "model")?;
    let model_blake3 = col::<StringArray>(b, "model_blake3")?;
    let settings = col::<StringArray>(b, "settings")?;
    let created = col::<Int64Array>(b, "created_at")?;
    // Added after v1 files were written: absent columns read as null.
    let selected = b
        .column_by_name("selected")
        .and_then(|c| c.as_any().downcast_ref::<BooleanArray>());
    let opt_f64 = |name: &str| {
        b.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
    };
    let (value, agreement) = (opt_f64("value"), opt_f64("agreement"));
    let get_f =
        |a: Option<&Float64Array>, i: usize| a.filter(|a| a.is_valid(i)).map(|a| a.value(i));
    (0..b.num_rows())
        .map(|i| {
            let c = confs.value(i);
            let c = c
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or_else(|| StoreError::Schema("step_confidences items".into()))?;
            Ok(Chain {
                id: id.value(i).into(),
                seed_id: seed_id.value(i).into(),
                recipe: recipe(rec, i),
                system: opt_s(system, i),
                prompt: prompt.value(i).into(),
                reasoning: reasoning.value(i).into(),
                answer: answer.value(i).into(),
                reward: reward.value(i),
                step_confidences: c.values().to_vec(),
                tokens: tokens.value(i),
                reflections: reflections.value(i),
                verified: verified.is_valid(i).then(|| verified.value(i)),
                reference_answer: opt_s(reference, i),
                model: model.value(i).into(),
                model_blake3: model_blake3.value(i).into(),
                settings: settings.value(i).into(),
                created_at: created.value(i),
                selected: selected.filter(|a| a.is_valid(i)).map(|a| a.value(i)),
                value: get_f(value, i),
                agreement: get_f(agreement, i),
            })
        })
        .collect()
}

/// Read back rejects written by [`rejects_to_batch`].
pub fn batch_to_rejects(b: &RecordBatch) -> Result<Vec<Reject>> {
    let seed_id = col::<StringArray>(b, "seed_id")?;
    let chain_id = col::<StringArray>(b, "chain_id")?;
    let rec = col::<StringArray>(b, "recipe")?;
    let stage = col::<StringArray>(b, "stage")?;
    let reason = col::<StringArray>(b, "reason")?;
    let row = col::<StringArray>(b, "row")?;
    Ok((0..b.num_rows())
        .map(|i| Reject {
            seed_id: seed_id.value(i).into(),
            chain_id: opt_s(chain_id, i),
            recipe: recipe(rec, i),
            stage: stage.value(i).into(),
            reason: reason.value(i).into(),
            row: row.value(i).into(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<T: serde::Serialize>(v: &T) -> Vec<String> {
        match serde_json::to_value(v) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    fn names(s: &Schema) -> Vec<String> {
        let mut v: Vec<String> = s.fields().iter().map(|f| f.name().clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn every_record_field_has_a_column() {
        assert_eq!(names(&seeds_schema()), keys(&Seed::default()));
        assert_eq!(names(&chains_schema()), keys(&Chain::default()));
        assert_eq!(names(&rejects_schema()), keys(&Reject::default()));
    }

    #[test]
    fn json_schemas_match_the_arrow_types_built_in_code() {
        let hand = Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("seed_id", DataType::Utf8, false),
            Field::new("recipe", DataType::Utf8, true),
            Field::new(
                "messages",
                DataType::List(Arc::new(Field::new_list_field(
                    DataType::Struct(Fields::from(vec![
                        Field::new("role", DataType::Utf8, false),
                        Field::new("content", DataType::Utf8, false),
                    ])),
                    false,
                ))),
                false,
            ),
            Field::new("prompt", DataType::Utf8, false),
            Field::new("completion", DataType::Utf8, false),
            Field::new("system", DataType::Utf8, true),
            Field::new("reward", DataType::Float64, false),
            Field::new("model", DataType::Utf8, false),
            Field::new("verified", DataType::Boolean, true),
        ]);
        fn bare(f: &Field) -> Field {
            let dt = match f.data_type() {
                DataType::List(i) => DataType::List(Arc::new(bare(i))),
                DataType::Struct(fs) => {
                    DataType::Struct(fs.iter().map(|x| bare(x)).collect::<Vec<_>>().into())
                }
                d => d.clone(),
            };
            Field::new(f.name(), dt, f.is_nullable())
        }
        let strip = |s: &Schema| -> Vec<Field> { s.fields().iter().map(|f| bare(f)).collect() };
        assert_eq!(strip(&sft_schema()), strip(&hand));
        let chains = chains_schema();
        assert_eq!(
            chains
                .field_with_name("step_confidences")
                .map(|f| f.data_type().clone())
                .ok(),
            Some(DataType::List(Arc::new(Field::new_list_field(
                DataType::Float64,
                false
            ))))
        );
        assert_eq!(
            chains
                .field_with_name("created_at")
                .map(|f| f.data_type().clone())
                .ok(),
            Some(DataType::Int64)
        );
    }

    #[test]
    fn rows_roundtrip_through_batches() {
        let c = Chain {
            id: "c".into(),
            seed_id: "s".into(),
            recipe: Some(Recipe::MarcoCot),
            prompt: "p".into(),
            reward: 0.5,
            step_confidences: vec![0.25, 0.75],
            verified: Some(true),
            created_at: 7,
            ..Default::default()
        };
        let b = chains_to_batch(&[c.clone(), Chain::default()]).expect("batch");
        assert_eq!(
            batch_to_chains(&b).expect("read"),
            vec![c, Chain::default()]
        );
        let r = Reject {
            seed_id: "s".into(),
            stage: "ingest".into(),
            reason: "empty prompt".into(),
            ..Default::default()
        };
        let b = rejects_to_batch(std::slice::from_ref(&r)).expect("batch");
        assert_eq!(batch_to_rejects(&b).expect("read"), vec![r]);
        let s = Seed {
            id: "x".into(),
            prompt: "y".into(),
            meta: Some("{}".into()),
            ..Default::default()
        };
        assert_eq!(seeds_to_batch(&[s]).expect("batch").num_rows(), 1);
    }
}
