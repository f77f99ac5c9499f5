//! Custom images: a runtime image with packages baked in, their recipes, and finding one that holds
//! a requested package set (exact set first, else the smallest superset).

use std::collections::{BTreeSet, HashMap};

use bollard::image::ListImagesOptions;
use isol8_api::Runtime;

use crate::error::{Error, Result};
use crate::images::{short_hash, BuildProgress, ImageBuilder, PACKAGE_INDEX_VARS};
use crate::spec::{LABEL_KIND, LABEL_RUNTIME};

/// Label listing an image's packages, sorted and comma-separated.
pub const LABEL_PACKAGES: &str = "isol8.packages";
/// Label naming the runtime image a custom image was built on; a custom image whose base is no
/// longer current is stale and never chosen.
pub const LABEL_BASE: &str = "isol8.base";

/// The tag `isol8 setup --<runtime> <packages>` gives the image that runs of that runtime use by default.
pub fn default_custom_tag(runtime: Runtime) -> String {
    format!("isol8-custom-{runtime}:default")
}

/// A custom image on the Docker engine, as `isol8 images` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomImage {
    pub id: String,
    /// Its content-hashed tag first, then its aliases (`--tag`, `:default`).
    pub tags: Vec<String>,
    pub runtime: Runtime,
    pub packages: Vec<String>,
    pub size_bytes: u64,
    /// When it was built, in seconds since the Unix epoch.
    pub created: i64,
    /// Built on the current runtime image, so runs may use it (a stale one is never chosen).
    pub current: bool,
}

/// A validated, de-duplicated, sorted set of package specifiers for one runtime.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct PackageSet(BTreeSet<String>);

impl PackageSet {
    /// Checks every name: no option injection (a leading `-`), no shell metacharacters, no spaces.
    /// Names may carry version specifiers (`requests==2.32.3`, `lodash@4`, `npm:chalk@5`, `jq=1.6-2`).
    pub fn parse<S: AsRef<str>>(runtime: Runtime, names: &[S]) -> Result<PackageSet> {
        let mut set = BTreeSet::new();
        for raw in names {
            let name = raw.as_ref().trim();
            let allowed = |c: char| c.is_ascii_alphanumeric() || "@._/+:=<>!~^*,[]-".contains(c);
            let first_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '@');
            if !first_ok || !name.chars().all(allowed) || name.len() > 214 {
                return Err(Error::InvalidRequest(format!(
                    "package \"{name}\" is not a valid {runtime} package name"
                )));
            }
            set.insert(name.to_string());
        }
        Ok(PackageSet(set))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// The form stored in [`LABEL_PACKAGES`].
    pub fn label(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join(",")
    }

    /// The shell script that installs these packages at the start of a run, as the sandbox user,
    /// where the program finds them (user site, /sandbox/node_modules, the deno cache); `None` for
    /// bash, whose apt needs root and a writable root filesystem. Names are validated; each is
    /// single-quoted.
    pub fn install_script(&self, runtime: Runtime) -> Option<String> {
        let names: Vec<String> = self.0.iter().map(|n| format!("'{n}'")).collect();
        let names = names.join(" ");
        let command = match runtime {
            Runtime::Python => {
                format!("pip install --user --no-input --disable-pip-version-check {names}")
            }
            Runtime::Node => {
                format!("cd /sandbox && npm install --no-audit --no-fund --no-save {names}")
            }
            Runtime::Bun => format!("cd /sandbox && bun add {names}"),
            Runtime::Deno => {
                let specs: Vec<String> = self
                    .0
                    .iter()
                    .map(|n| match n.starts_with("npm:") || n.starts_with("jsr:") {
                        true => format!("'{n}'"),
                        false => format!("'npm:{n}'"),
                    })
                    .collect();
                format!("deno cache {}", specs.join(" "))
            }
            Runtime::Bash => return None,
        };
        Some(format!("set -e; {command}"))
    }

    fn from_label(label: &str) -> PackageSet {
        PackageSet(
            label
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    fn is_superset_of(&self, other: &PackageSet) -> bool {
        self.0.is_superset(&other.0)
    }
}

/// The Dockerfile that installs `packages` on top of the runtime image `BASE`, as root, placing them
/// where the sandbox user's interpreter finds them. Package names go in as separate exec-form
/// arguments, never through a shell line.
pub(crate) fn custom_dockerfile(runtime: Runtime, packages: &PackageSet) -> String {
    let names: Vec<&str> = packages.names().collect();
    let quoted = |args: &[&str]| serde_json::to_string(args).expect("strings serialize");
    let script = |body: &str, program: &str| {
        let mut args = vec!["sh", "-c", body, program];
        args.extend(&names);
        quoted(&args)
    };
    let (install, env) = match runtime {
        Runtime::Python => {
            let mut args = vec![
                "python3",
                "/opt/isol8/pip/pip",
                "install",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--no-input",
                "--target",
                "/opt/isol8/python",
            ];
            args.extend(&names);
            (quoted(&args), "ENV PYTHONPATH=/opt/isol8/python\n")
        }
        // `/node_modules` is where node and bun look last when resolving from /sandbox, for both
        // `require` and `import`; NODE_PATH alone would not serve ES modules.
        Runtime::Node => (
            script(
                "set -e; npm install --prefix /opt/isol8 --no-audit --no-fund \"$@\"; ln -s /opt/isol8/node_modules /node_modules; rm -rf /tmp/.npm",
                "npm",
            ),
            "",
        ),
        Runtime::Bun => (
            script(
                "set -e; cd /opt/isol8; bun add \"$@\"; ln -s /opt/isol8/node_modules /node_modules; rm -rf /tmp/.bun-cache",
                "bun",
            ),
            "",
        ),
        // Bare names are npm packages; `jsr:` and `npm:` specifiers pass through.
        Runtime::Deno => (
            script(
                "set -e; for p in \"$@\"; do case \"$p\" in npm:*|jsr:*) ;; *) p=\"npm:$p\";; esac; set -- \"$@\" \"$p\"; shift; done; deno cache --reload \"$@\"; chmod -R a+rX /opt/isol8/deno",
                "deno",
            ),
            "",
        ),
        Runtime::Bash => (
            script(
                "set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get install -y -qq --no-install-recommends \"$@\"; rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb",
                "apt-get",
            ),
            "",
        ),
    };
    let deno_dir = if runtime == Runtime::Deno {
        "ENV DENO_DIR=/opt/isol8/deno\n"
    } else {
        ""
    };
    // Package index locations are build variables, not part of the recipe hash: where packages come
    // from does not change which packages an image holds.
    let args: String = PACKAGE_INDEX_VARS
        .iter()
        .map(|a| format!("ARG {a}\n"))
        .collect();
    format!(
        "# isol8 custom {runtime} image: {}\nARG BASE\nFROM ${{BASE}}\n{args}{deno_dir}RUN {install}\n{env}",
        packages.label()
    )
}

/// The hashed tag of the custom image holding `packages` on the runtime image `base_tag`.
fn custom_tag(runtime: Runtime, base_tag: &str, packages: &PackageSet) -> String {
    let recipe = custom_dockerfile(runtime, packages);
    format!(
        "isol8-custom-{runtime}:{}",
        short_hash([base_tag.as_bytes(), recipe.as_bytes()])
    )
}

impl ImageBuilder {
    /// Builds (unless present, or with `force`) the custom image of `runtime` holding `packages` on the
    /// current runtime image, tags it `alias` too when given, and returns its hashed tag.
    pub async fn ensure_custom(
        &self,
        runtime: Runtime,
        packages: &PackageSet,
        alias: Option<&str>,
        force: bool,
        progress: &(dyn Fn(BuildProgress) + Send + Sync),
    ) -> Result<String> {
        if packages.is_empty() {
            return Err(Error::InvalidRequest(
                "no packages given: a custom image needs at least one package".into(),
            ));
        }
        let base_tag = self.ensure_runtime(runtime, force, progress).await?;
        let tag = custom_tag(runtime, &base_tag, packages);
        if !force && self.image_id(&tag).await?.is_some() {
            progress(BuildProgress::UpToDate { image: tag.clone() });
        } else {
            let files = vec![(
                "Dockerfile".to_string(),
                custom_dockerfile(runtime, packages).into_bytes(),
            )];
            let mut args = HashMap::from([("BASE", base_tag.as_str())]);
            args.extend(
                self.config()
                    .package_index
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
            let (runtime_name, label) = (runtime.to_string(), packages.label());
            let labels = HashMap::from([
                (LABEL_KIND, "custom"),
                (LABEL_RUNTIME, runtime_name.as_str()),
                (LABEL_PACKAGES, label.as_str()),
                (LABEL_BASE, base_tag.as_str()),
            ]);
            self.build(&tag, &files, args, labels, force, progress)
                .await?;
        }
        if let Some(alias) = alias {
            self.tag(&tag, alias).await?;
        }
        Ok(tag)
    }

    /// The custom image of `runtime` built on the current runtime image that holds exactly
    /// `packages`, else the smallest one holding all of them, else `None`.
    pub async fn find_custom(
        &self,
        runtime: Runtime,
        packages: &PackageSet,
    ) -> Result<Option<String>> {
        let Some(base_tag) = self.find_runtime(runtime).await? else {
            return Ok(None);
        };
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_KIND}=custom"),
                format!("{LABEL_RUNTIME}={runtime}"),
                format!("{LABEL_BASE}={base_tag}"),
            ],
        )]);
        let images = self
            .docker()
            .list_images(Some(ListImagesOptions {
                filters,
                ..Default::default()
            }))
            .await
            .map_err(Error::docker("list images"))?;
        let prefix = format!("isol8-custom-{runtime}:");
        let best = images
            .iter()
            .filter_map(|image| {
                let held = PackageSet::from_label(image.labels.get(LABEL_PACKAGES)?);
                let tag = image
                    .repo_tags
                    .iter()
                    .find(|t| t.starts_with(&prefix) && !t.ends_with(":default"))?;
                held.is_superset_of(packages)
                    .then(|| (held.0.len(), tag.clone()))
            })
            .min();
        Ok(best.map(|(_, tag)| tag))
    }

    /// Every custom image on this Docker engine, newest first, with whether it is built on the
    /// current runtime image of its runtime (a stale one is never chosen for a run).
    pub async fn list_custom(&self) -> Result<Vec<CustomImage>> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_KIND}=custom")])]);
        let images = self
            .docker()
            .list_images(Some(ListImagesOptions {
                filters,
                ..Default::default()
            }))
            .await
            .map_err(Error::docker("list images"))?;
        let current = self.find_runtimes(&Runtime::ALL).await?;
        let mut list: Vec<CustomImage> = images
            .into_iter()
            .filter_map(|image| {
                let runtime: Runtime = image.labels.get(LABEL_RUNTIME)?.parse().ok()?;
                let mut tags = image.repo_tags.clone();
                tags.retain(|t| t != "<none>:<none>");
                // The hashed tag first, then aliases.
                tags.sort_by_key(|t| !t.starts_with(&format!("isol8-custom-{runtime}:")));
                Some(CustomImage {
                    id: image.id.clone(),
                    tags,
                    runtime,
                    packages: image
                        .labels
                        .get(LABEL_PACKAGES)
                        .map(|l| PackageSet::from_label(l).0.into_iter().collect())
                        .unwrap_or_default(),
                    size_bytes: u64::try_from(image.size).unwrap_or(0),
                    created: image.created,
                    current: image.labels.get(LABEL_BASE) == current.get(&runtime),
                })
            })
            .collect();
        list.sort_by(|a, b| b.created.cmp(&a.created).then(a.tags.cmp(&b.tags)));
        Ok(list)
    }

    /// The tag isol8 itself computes for `image`, when `image` is that very image: the current
    /// runtime image of the runtime its labels name, or the custom image its labels describe
    /// (`custom_tag` of its base and packages). Returns the runtime and that tag, else `None`
    /// (no such image, or not isol8's).
    ///
    /// Labels alone prove nothing: an image built `FROM isol8-python` inherits every `isol8.*`
    /// label, and anyone who builds images on the engine can set them. Only an image whose id is
    /// the id of a tag isol8 derives from its own recipes passes; such a tag is made only by
    /// isol8's builds (or by someone who can already drive the engine).
    pub(crate) async fn verified_tag(&self, image: &str) -> Result<Option<(Runtime, String)>> {
        let inspected = match self.docker().inspect_image(image).await {
            Ok(inspected) => inspected,
            Err(err) if crate::error::is_not_found(&err) => return Ok(None),
            Err(err) => return Err(Error::docker("inspect image")(err)),
        };
        let Some(id) = inspected.id else {
            return Ok(None);
        };
        let labels = inspected.config.and_then(|c| c.labels).unwrap_or_default();
        let Some(runtime) = labels
            .get(LABEL_RUNTIME)
            .and_then(|r| r.parse::<Runtime>().ok())
        else {
            return Ok(None);
        };
        let mut candidates = Vec::new();
        if let Some(tag) = self.find_runtime(runtime).await? {
            candidates.push(tag);
        }
        if labels.get(LABEL_KIND).map(String::as_str) == Some("custom") {
            if let (Some(base), Some(packages)) =
                (labels.get(LABEL_BASE), labels.get(LABEL_PACKAGES))
            {
                candidates.push(custom_tag(runtime, base, &PackageSet::from_label(packages)));
            }
        }
        for tag in candidates {
            if self.image_id(&tag).await?.as_deref() == Some(id.as_str()) {
                return Ok(Some((runtime, tag)));
            }
        }
        Ok(None)
    }

    /// The image `isol8 setup` baked default packages into for `runtime`, when it sits on the current
    /// runtime image.
    pub async fn find_default_custom(&self, runtime: Runtime) -> Result<Option<String>> {
        let tag = default_custom_tag(runtime);
        let Some(labels) = self.image_labels(&tag).await? else {
            return Ok(None);
        };
        let current = self.find_runtime(runtime).await?;
        Ok((labels.get(LABEL_BASE) == current.as_ref()).then_some(tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_sets_are_sorted_deduplicated_and_validated() {
        let set = PackageSet::parse(Runtime::Python, &["six", " attrs ", "six"]).unwrap();
        assert_eq!(set.label(), "attrs,six");
        assert!(PackageSet::parse(Runtime::Python, &[""]).is_err());
        for bad in [
            "-e",
            "--index-url=http://x",
            "a b",
            "x;rm -rf /",
            "$(id)",
            "a\"b",
        ] {
            let err = PackageSet::parse(Runtime::Python, &[bad]).unwrap_err();
            assert!(err.to_string().contains(bad.trim()), "{err}");
        }
        for good in [
            "requests==2.32.3",
            "@types/node@22",
            "npm:chalk@5",
            "jq=1.6-2",
            "a[b,c]>=1",
        ] {
            PackageSet::parse(Runtime::Node, &[good]).unwrap();
        }
    }

    #[test]
    fn superset_and_label_round_trip() {
        let big = PackageSet::parse(Runtime::Python, &["a", "b", "c"]).unwrap();
        let small = PackageSet::parse(Runtime::Python, &["c", "a"]).unwrap();
        assert!(PackageSet::from_label(&big.label()).is_superset_of(&small));
        assert!(!small.is_superset_of(&big));
    }

    #[test]
    fn recipes_pass_names_as_separate_arguments_and_hash_them() {
        let set = PackageSet::parse(Runtime::Bash, &["jq"]).unwrap();
        let recipe = custom_dockerfile(Runtime::Bash, &set);
        assert!(recipe.contains("\"apt-get\",\"jq\"]"), "{recipe}");
        let other = PackageSet::parse(Runtime::Bash, &["curl"]).unwrap();
        assert_ne!(
            custom_tag(Runtime::Bash, "isol8-bash:1", &set),
            custom_tag(Runtime::Bash, "isol8-bash:1", &other)
        );
        assert_ne!(
            custom_tag(Runtime::Bash, "isol8-bash:1", &set),
            custom_tag(Runtime::Bash, "isol8-bash:2", &set)
        );
    }
}
