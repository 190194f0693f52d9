"""Write medlab's embedded sample medical data (``medlab/assets/sample/``).

Every fact below was written by hand for this project: general, consumer-level health
information in English and Chinese. The files are for smoke tests, demos and tutorials,
not for clinical use. Nothing is downloaded and the only randomness is a fixed-seed
``random.Random``, so rerunning reproduces the committed files byte for byte::

    python -m medlab.assets.make_sample_data && python -m medlab.assets.build_tokenizer

Outputs (see ``sample/README.md`` for the fields):

- ``medical_corpus.txt``   one paragraph per line, for continued pretraining
- ``sft_alpaca.jsonl``     ``{"instruction", "input", "output"}``
- ``sft_sharegpt.jsonl``   ``{"conversations": [{"from", "value"}]}``
- ``sft_messages.jsonl``   ``{"messages": [{"role", "content"}]}``
- ``toolcall.jsonl``       glaive-style tool calling: ``{"conversations", "tools"}``
- ``val_sft_alpaca.jsonl`` held-out alpaca rows (conditions and phrasings unseen in training)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

SEED = 20240611
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


# --------------------------------------------------------------------------------------
# Fact tables
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One condition. ``urgent``/``urgent_zh`` are noun phrases; every other text is full sentences."""

    key: str
    en: str
    zh: str
    symptoms: str
    symptoms_zh: str
    causes: str
    causes_zh: str
    diagnosis: str
    diagnosis_zh: str
    treatment: str
    treatment_zh: str
    prevention: str
    prevention_zh: str
    urgent: str
    urgent_zh: str


CONDITIONS = [
    Condition(
        key="hypertension", en="hypertension", zh="高血压",
        symptoms="Hypertension usually causes no symptoms, which is why regular checks matter; very high readings may cause headache, dizziness, blurred vision or nosebleeds.",
        symptoms_zh="高血压通常没有明显症状，所以需要定期测量血压；血压很高时可能出现头痛、头晕、视物模糊或流鼻血。",
        causes="Most cases are primary hypertension linked to age, family history, a salty diet, excess weight, physical inactivity, heavy drinking and stress; a minority is caused by kidney disease, hormonal disorders or certain medicines.",
        causes_zh="大多数为原发性高血压，与年龄、家族史、高盐饮食、超重、缺乏运动、过量饮酒和精神紧张有关；少数由肾脏疾病、内分泌疾病或某些药物引起。",
        diagnosis="It is diagnosed from blood pressure readings taken on at least two separate days; clinic readings of 140/90 mmHg or higher are generally considered high, and home or 24-hour ambulatory monitoring helps confirm the diagnosis.",
        diagnosis_zh="诊断依据非同日至少两次测量的血压；诊室血压达到或超过140/90 mmHg一般认为偏高，家庭自测血压或24小时动态血压监测有助于确诊。",
        treatment="Treatment combines lifestyle changes such as less salt, weight control, regular exercise and limiting alcohol with daily medicines when needed, for example ACE inhibitors, ARBs, calcium channel blockers or thiazide diuretics.",
        treatment_zh="治疗包括限盐、控制体重、规律运动、限制饮酒等生活方式调整，必要时每天服用降压药，如ACEI、ARB、钙通道阻滞剂或噻嗪类利尿剂。",
        prevention="Eating less than 5 g of salt a day, staying at a healthy weight, being active about 150 minutes a week, limiting alcohol and checking blood pressure regularly all lower the risk.",
        prevention_zh="每天食盐少于5克、保持健康体重、每周进行约150分钟中等强度运动、限制饮酒并定期测量血压，都能降低患病风险。",
        urgent="a reading above 180/120 mmHg together with chest pain, a severe headache, confusion, weakness or trouble speaking",
        urgent_zh="血压超过180/120 mmHg并伴有胸痛、剧烈头痛、意识模糊、肢体无力或说话困难",
    ),
    Condition(
        key="type2_diabetes", en="type 2 diabetes", zh="2型糖尿病",
        symptoms="Typical symptoms are increased thirst, frequent urination, tiredness, blurred vision, slow-healing wounds and unexplained weight loss, although many people have no symptoms at first.",
        symptoms_zh="典型症状有口渴、多尿、乏力、视物模糊、伤口愈合慢和不明原因的体重下降，但很多人早期没有任何症状。",
        causes="The body becomes resistant to insulin and the pancreas cannot keep up; risk rises with excess weight, physical inactivity, family history, older age and a history of diabetes in pregnancy.",
        causes_zh="身体对胰岛素产生抵抗，胰腺分泌的胰岛素不足以代偿；超重、缺乏运动、家族史、年龄增长和妊娠糖尿病史都会增加风险。",
        diagnosis="It is diagnosed with blood tests: a fasting plasma glucose of 7.0 mmol/L or higher, an HbA1c of 6.5% or higher, or a 2-hour glucose of 11.1 mmol/L or higher on an oral glucose tolerance test, usually confirmed by a repeat test.",
        diagnosis_zh="通过血液检查诊断：空腹血糖≥7.0 mmol/L、糖化血红蛋白≥6.5%，或口服葡萄糖耐量试验2小时血糖≥11.1 mmol/L，通常需要复查确认。",
        treatment="Treatment starts with healthy eating, regular activity and weight loss; metformin is the usual first medicine, and others such as SGLT2 inhibitors, GLP-1 receptor agonists or insulin are added as needed.",
        treatment_zh="治疗从合理饮食、规律运动和减重开始；二甲双胍通常是首选药物，必要时加用SGLT2抑制剂、GLP-1受体激动剂或胰岛素等。",
        prevention="Keeping a healthy weight, exercising regularly, eating more vegetables and whole grains and fewer sugary drinks, and screening people at high risk can prevent or delay it.",
        prevention_zh="保持健康体重、规律运动、多吃蔬菜和全谷物、少喝含糖饮料，并对高危人群进行筛查，可以预防或延缓发病。",
        urgent="very high blood sugar with vomiting, deep rapid breathing, confusion or drowsiness, or low blood sugar with shaking, sweating and confusion",
        urgent_zh="血糖很高并伴有呕吐、呼吸深快、意识模糊或嗜睡，或者低血糖出现手抖、出汗和意识不清",
    ),
    Condition(
        key="common_cold", en="the common cold", zh="普通感冒",
        symptoms="A cold usually causes a runny or blocked nose, sneezing, sore throat, mild cough and sometimes a low fever, and it typically improves within 7 to 10 days.",
        symptoms_zh="普通感冒常表现为流鼻涕或鼻塞、打喷嚏、咽痛、轻微咳嗽，有时伴低热，一般7到10天内好转。",
        causes="It is caused by viruses, most often rhinoviruses, that spread through droplets and contaminated hands.",
        causes_zh="由病毒引起，最常见的是鼻病毒，通过飞沫和被污染的手传播。",
        diagnosis="It is diagnosed from the symptoms; tests are rarely needed unless another illness such as influenza or strep throat is suspected.",
        diagnosis_zh="根据症状即可诊断，一般不需要检查，除非怀疑流感或链球菌咽炎等其他疾病。",
        treatment="Rest, fluids, saline nasal rinses and paracetamol or ibuprofen for aches relieve symptoms; antibiotics do not help because colds are viral.",
        treatment_zh="休息、多喝水、生理盐水洗鼻，必要时用对乙酰氨基酚或布洛芬缓解不适；感冒是病毒感染，抗生素无效。",
        prevention="Washing hands often, avoiding touching the face and staying away from people who are sick reduce the chance of catching a cold.",
        prevention_zh="勤洗手、避免用手触摸口鼻眼、尽量远离患病的人，可以减少感冒的机会。",
        urgent="difficulty breathing, a fever lasting more than three days, or symptoms that get worse after first improving",
        urgent_zh="呼吸困难、发热超过三天，或症状好转后又加重",
    ),
    Condition(
        key="influenza", en="influenza", zh="流行性感冒",
        symptoms="Flu often starts suddenly with high fever, chills, muscle aches, headache, tiredness, dry cough and sore throat.",
        symptoms_zh="流感常突然起病，出现高热、寒战、肌肉酸痛、头痛、乏力、干咳和咽痛。",
        causes="It is caused by influenza A and B viruses, which spread through droplets and peak in the colder months.",
        causes_zh="由甲型和乙型流感病毒引起，通过飞沫传播，冬春季高发。",
        diagnosis="Doctors usually diagnose it from symptoms during flu season, and a rapid antigen or PCR test of a nasal swab can confirm it.",
        diagnosis_zh="流感季节医生通常根据症状诊断，鼻咽拭子抗原快速检测或核酸检测可以确诊。",
        treatment="Most people recover with rest, fluids and fever relief; antiviral medicines such as oseltamivir work best when started within 48 hours and are recommended for people at high risk.",
        treatment_zh="大多数人通过休息、补液和退热即可康复；奥司他韦等抗病毒药在发病48小时内使用效果最好，高危人群应及时使用。",
        prevention="A yearly flu vaccine is the best protection, along with hand washing and staying home when ill.",
        prevention_zh="每年接种流感疫苗是最好的预防方法，同时要勤洗手，生病时居家休息。",
        urgent="trouble breathing, chest pain, confusion, persistent vomiting, or a fever that returns after getting better",
        urgent_zh="呼吸困难、胸痛、意识模糊、持续呕吐，或退热后再次发热",
    ),
    Condition(
        key="asthma", en="asthma", zh="哮喘",
        symptoms="Asthma causes episodes of wheezing, shortness of breath, chest tightness and coughing, often worse at night or early morning.",
        symptoms_zh="哮喘表现为反复发作的喘息、气短、胸闷和咳嗽，常在夜间或清晨加重。",
        causes="The airways are chronically inflamed and narrow in response to triggers such as allergens, cold air, exercise, smoke and respiratory infections; family history and allergies raise the risk.",
        causes_zh="气道存在慢性炎症，遇到过敏原、冷空气、运动、烟雾或呼吸道感染等诱因时会收窄；家族史和过敏体质会增加风险。",
        diagnosis="Diagnosis relies on the symptom pattern plus lung function tests such as spirometry showing airflow obstruction that improves after a bronchodilator.",
        diagnosis_zh="诊断依据症状特点和肺功能检查，如肺通气功能显示气流受限且在吸入支气管舒张剂后明显改善。",
        treatment="Inhaled corticosteroids control the inflammation, and fast-acting relievers such as salbutamol open the airways during attacks; a written action plan helps adjust treatment.",
        treatment_zh="吸入性糖皮质激素用于控制炎症，沙丁胺醇等速效药物在发作时扩张气道；制定书面哮喘行动计划有助于调整治疗。",
        prevention="Avoiding known triggers, not smoking, getting flu vaccines and taking controller inhalers every day reduce attacks.",
        prevention_zh="避免已知诱因、不吸烟、接种流感疫苗并每天规律使用控制药物，可以减少发作。",
        urgent="breathlessness that makes it hard to speak, blue lips, or a reliever inhaler that is not helping",
        urgent_zh="气喘到说话困难、嘴唇发紫，或使用缓解药后仍无改善",
    ),
    Condition(
        key="copd", en="chronic obstructive pulmonary disease (COPD)", zh="慢性阻塞性肺疾病",
        symptoms="COPD causes a long-lasting cough with phlegm, shortness of breath that slowly worsens, wheezing and frequent chest infections.",
        symptoms_zh="慢阻肺表现为长期咳嗽咳痰、逐渐加重的气短、喘息以及反复的肺部感染。",
        causes="Smoking is the main cause; long-term exposure to indoor cooking smoke, dust and chemical fumes also contributes.",
        causes_zh="吸烟是最主要的原因；长期接触室内燃料烟雾、粉尘和化学烟雾也会导致发病。",
        diagnosis="Spirometry confirms it when the ratio of FEV1 to FVC stays below 0.70 after a bronchodilator; chest imaging helps rule out other diseases.",
        diagnosis_zh="肺功能检查在吸入支气管舒张剂后FEV1/FVC仍低于0.70即可确诊；胸部影像有助于排除其他疾病。",
        treatment="Quitting smoking is the most important step; inhaled bronchodilators, pulmonary rehabilitation, vaccines and oxygen for some patients improve breathing and quality of life.",
        treatment_zh="戒烟是最重要的措施；吸入支气管舒张剂、肺康复训练、接种疫苗以及部分患者的氧疗都能改善呼吸和生活质量。",
        prevention="Not smoking, avoiding second-hand smoke and using ventilated stoves or masks in dusty work prevent most cases.",
        prevention_zh="不吸烟、避免二手烟、改善厨房通风、在粉尘环境中佩戴口罩，可以预防大多数病例。",
        urgent="severe breathlessness, confusion, bluish lips or a sudden increase in coloured sputum with fever",
        urgent_zh="严重气促、意识模糊、嘴唇发紫，或痰量突然增多变脓并伴发热",
    ),
    Condition(
        key="pneumonia", en="pneumonia", zh="肺炎",
        symptoms="Pneumonia causes cough with phlegm, fever, chills, shortness of breath and chest pain on breathing; older adults may only seem confused or weak.",
        symptoms_zh="肺炎表现为咳嗽咳痰、发热、寒战、气短和呼吸时胸痛；老年人可能只表现为精神差或意识模糊。",
        causes="It is an infection of the lung tissue, most often by bacteria such as Streptococcus pneumoniae or by viruses; older age, smoking and chronic illness raise the risk.",
        causes_zh="是肺组织的感染，最常见的病原体是肺炎链球菌等细菌或病毒；高龄、吸烟和慢性病会增加风险。",
        diagnosis="Doctors listen to the chest and confirm it with a chest X-ray; blood tests and oxygen levels show how severe it is.",
        diagnosis_zh="医生通过听诊发现异常，并用胸部X线片确诊；血液检查和血氧饱和度可以判断严重程度。",
        treatment="Bacterial pneumonia is treated with antibiotics, plus rest, fluids and fever control; severe cases need hospital care and oxygen.",
        treatment_zh="细菌性肺炎需要使用抗生素，同时休息、补液和退热；重症患者需要住院和吸氧。",
        prevention="Pneumococcal and flu vaccines, not smoking and good hand hygiene lower the risk.",
        prevention_zh="接种肺炎球菌疫苗和流感疫苗、不吸烟、注意手卫生，可以降低风险。",
        urgent="fast or difficult breathing, lips turning blue, confusion or a very high fever",
        urgent_zh="呼吸急促或困难、嘴唇发紫、意识模糊或持续高热",
    ),
    Condition(
        key="gerd", en="gastroesophageal reflux disease (GERD)", zh="胃食管反流病",
        symptoms="The main symptoms are heartburn, a sour taste from acid coming up, chest discomfort after meals and sometimes a chronic cough or hoarse voice.",
        symptoms_zh="主要症状是烧心、反酸，饭后胸骨后不适，有时伴有慢性咳嗽或声音嘶哑。",
        causes="Stomach acid flows back into the oesophagus because the lower oesophageal sphincter relaxes; obesity, large late meals, smoking, alcohol and pregnancy make it worse.",
        causes_zh="由于食管下括约肌松弛，胃酸反流到食管；肥胖、晚餐过饱、吸烟、饮酒和怀孕会加重症状。",
        diagnosis="It is often diagnosed from typical symptoms and response to acid-suppressing medicine; endoscopy is used when there are warning signs or symptoms persist.",
        diagnosis_zh="通常根据典型症状和抑酸治疗的效果诊断；有报警症状或症状持续时需要做胃镜检查。",
        treatment="Lifestyle changes and proton pump inhibitors such as omeprazole taken before breakfast are the main treatment; antacids give quick short-term relief.",
        treatment_zh="主要治疗是调整生活方式，并在早餐前服用奥美拉唑等质子泵抑制剂；抗酸药可以短期快速缓解症状。",
        prevention="Losing excess weight, eating smaller meals, not lying down within three hours of eating, raising the head of the bed and avoiding smoking help prevent reflux.",
        prevention_zh="减轻体重、少食多餐、餐后三小时内不躺下、抬高床头、戒烟，都有助于预防反流。",
        urgent="difficulty swallowing, vomiting blood, black stools or unexplained weight loss",
        urgent_zh="吞咽困难、呕血、黑便或不明原因的体重下降",
    ),
    Condition(
        key="peptic_ulcer", en="peptic ulcer disease", zh="消化性溃疡",
        symptoms="A burning or gnawing pain in the upper abdomen is typical, often related to meals, sometimes with bloating, nausea or loss of appetite.",
        symptoms_zh="典型表现是上腹部烧灼样或隐痛，常与进食有关，有时伴腹胀、恶心或食欲下降。",
        causes="Most ulcers are caused by Helicobacter pylori infection or by regular use of anti-inflammatory painkillers such as ibuprofen or aspirin.",
        causes_zh="大多数溃疡由幽门螺杆菌感染或长期服用布洛芬、阿司匹林等非甾体抗炎药引起。",
        diagnosis="Endoscopy shows the ulcer directly, and a breath, stool or biopsy test checks for Helicobacter pylori.",
        diagnosis_zh="胃镜可以直接看到溃疡，呼气试验、粪便抗原或活检可以检测幽门螺杆菌。",
        treatment="Proton pump inhibitors heal the ulcer; if Helicobacter pylori is present it is eradicated with a combination of antibiotics, and painkillers that irritate the stomach are stopped where possible.",
        treatment_zh="质子泵抑制剂可促进溃疡愈合；如果感染幽门螺杆菌，需要联合抗生素根除治疗，并尽量停用刺激胃的止痛药。",
        prevention="Avoiding unnecessary anti-inflammatory painkillers, not smoking, limiting alcohol and treating Helicobacter pylori infection reduce the risk.",
        prevention_zh="避免不必要地服用非甾体抗炎药、戒烟、限酒并及时治疗幽门螺杆菌感染，可以降低风险。",
        urgent="vomiting blood or material like coffee grounds, black tarry stools, or sudden severe abdominal pain",
        urgent_zh="呕血或呕吐咖啡渣样物、解柏油样黑便，或突发剧烈腹痛",
    ),
    Condition(
        key="iron_deficiency_anemia", en="iron-deficiency anaemia", zh="缺铁性贫血",
        symptoms="It causes tiredness, weakness, pale skin, shortness of breath on exertion, dizziness, and sometimes brittle nails or cravings for ice.",
        symptoms_zh="表现为乏力、虚弱、面色苍白、活动后气短、头晕，有时指甲变脆或有异食癖。",
        causes="It results from blood loss such as heavy periods or bleeding in the gut, low iron intake, poor absorption, or higher needs during pregnancy and growth.",
        causes_zh="原因包括月经过多或消化道出血等失血、铁摄入不足、吸收不良，以及怀孕和生长发育期需求增加。",
        diagnosis="A blood count shows low haemoglobin with small red cells, and a low ferritin confirms iron deficiency; the cause of the iron loss should also be looked for.",
        diagnosis_zh="血常规显示血红蛋白降低、红细胞体积偏小，血清铁蛋白降低可确诊缺铁；同时需要查找缺铁的原因。",
        treatment="Oral iron tablets, taken for about three months after the blood count normalises to refill stores, are the usual treatment, together with treating the cause.",
        treatment_zh="通常口服铁剂，血红蛋白恢复正常后还需继续服用约三个月以补充储存铁，同时治疗病因。",
        prevention="Eating iron-rich foods such as red meat, beans and dark green vegetables, with vitamin C to aid absorption, helps prevent it.",
        prevention_zh="多吃红肉、豆类和深绿色蔬菜等富含铁的食物，并搭配富含维生素C的食物促进吸收，有助于预防。",
        urgent="chest pain, fainting, a racing heart or black stools",
        urgent_zh="胸痛、晕厥、心跳明显加快或出现黑便",
    ),
    Condition(
        key="migraine", en="migraine", zh="偏头痛",
        symptoms="Migraine causes a throbbing, often one-sided headache lasting hours to days, with nausea and sensitivity to light and sound; some people see visual auras beforehand.",
        symptoms_zh="偏头痛表现为搏动性头痛，常位于一侧，持续数小时到数天，伴恶心、怕光怕声；部分人发作前出现视觉先兆。",
        causes="It is a neurological disorder with a genetic tendency; triggers include lack of sleep, stress, skipped meals, hormonal changes and certain foods or drinks.",
        causes_zh="是一种具有遗传倾向的神经系统疾病；睡眠不足、压力、饥饿、激素变化和某些食物饮料都可能诱发。",
        diagnosis="It is diagnosed from the history and a normal neurological examination; scans are only needed when the pattern is unusual.",
        diagnosis_zh="根据病史和正常的神经系统检查即可诊断；只有头痛特点不典型时才需要做影像检查。",
        treatment="Attacks are treated early with painkillers such as ibuprofen or with triptans, and frequent migraines can be reduced with preventive medicines.",
        treatment_zh="发作时尽早使用布洛芬等止痛药或曲坦类药物，发作频繁者可以使用预防性药物。",
        prevention="Regular sleep and meals, staying hydrated, managing stress and keeping a headache diary to spot triggers help prevent attacks.",
        prevention_zh="规律睡眠和饮食、充足饮水、缓解压力，并记录头痛日记找出诱因，有助于预防发作。",
        urgent="a sudden 'worst ever' headache, headache with fever and stiff neck, weakness, or confusion",
        urgent_zh="突发的“一生中最剧烈”的头痛、头痛伴发热和颈部僵硬、肢体无力或意识模糊",
    ),
    Condition(
        key="tension_headache", en="tension-type headache", zh="紧张型头痛",
        symptoms="It feels like a dull, pressing band around the head, usually on both sides, without nausea, and does not get worse with routine activity.",
        symptoms_zh="表现为头部两侧紧箍样或压迫样钝痛，一般不伴恶心，日常活动不会加重。",
        causes="Stress, poor posture, tight neck and shoulder muscles, lack of sleep and eye strain are common contributors.",
        causes_zh="精神压力、不良姿势、颈肩部肌肉紧张、睡眠不足和用眼疲劳是常见诱因。",
        diagnosis="The diagnosis is clinical, based on the typical description and a normal examination.",
        diagnosis_zh="根据典型的头痛特点和正常的体格检查即可做出临床诊断。",
        treatment="Simple painkillers such as paracetamol or ibuprofen, rest, neck stretches and relaxation help; painkillers should not be used on more than about 10 to 15 days a month.",
        treatment_zh="可以使用对乙酰氨基酚或布洛芬等止痛药，配合休息、颈部拉伸和放松训练；每月服用止痛药不宜超过10到15天。",
        prevention="Regular breaks from screens, good posture, exercise, sleep and stress management reduce how often it happens.",
        prevention_zh="定时离开屏幕休息、保持良好姿势、规律运动、充足睡眠和管理压力，可以减少发作。",
        urgent="a headache that is sudden and severe, follows a head injury, or comes with weakness or vision loss",
        urgent_zh="突然剧烈的头痛、头部外伤后头痛，或伴有肢体无力或视力丧失",
    ),
    Condition(
        key="osteoarthritis", en="osteoarthritis", zh="骨关节炎",
        symptoms="It causes joint pain that worsens with use, short morning stiffness, reduced movement and sometimes swelling or a grating feeling, most often in the knees, hips and hands.",
        symptoms_zh="表现为活动后加重的关节疼痛、短暂晨僵、活动受限，有时关节肿胀或有摩擦感，常见于膝、髋和手部关节。",
        causes="Cartilage wears down over time; age, excess weight, previous joint injury and family history increase the risk.",
        causes_zh="关节软骨随时间逐渐磨损；年龄增长、超重、关节外伤史和家族史会增加风险。",
        diagnosis="It is diagnosed from symptoms and examination, and X-rays can show joint space narrowing and bone spurs.",
        diagnosis_zh="根据症状和体格检查诊断，X线片可见关节间隙变窄和骨赘形成。",
        treatment="Exercise, muscle strengthening and weight loss are the core treatment, with topical or oral anti-inflammatory painkillers for flares and joint replacement for severe cases.",
        treatment_zh="运动锻炼、肌力训练和减重是核心治疗，疼痛加重时可用外用或口服抗炎止痛药，严重者可考虑关节置换。",
        prevention="Keeping a healthy weight, staying active and protecting joints from injury reduce the risk.",
        prevention_zh="保持健康体重、坚持运动并避免关节损伤，可以降低风险。",
        urgent="a hot, red, very swollen joint with fever, or a joint that suddenly cannot bear weight",
        urgent_zh="关节红肿发热并伴有发烧，或关节突然无法负重",
    ),
    Condition(
        key="gout", en="gout", zh="痛风",
        symptoms="A gout attack causes sudden, severe pain, redness and swelling in a joint, classically the big toe, often starting at night.",
        symptoms_zh="痛风发作时关节突然剧烈疼痛、红肿发热，典型部位是大脚趾，常在夜间开始。",
        causes="High uric acid levels lead to crystals forming in joints; risk factors include alcohol, sugary drinks, organ meats and seafood, obesity, kidney disease and some diuretics.",
        causes_zh="血尿酸升高导致尿酸盐结晶沉积在关节；饮酒、含糖饮料、动物内脏和海鲜、肥胖、肾病和某些利尿剂都是危险因素。",
        diagnosis="Finding urate crystals in joint fluid confirms it; blood uric acid and ultrasound also support the diagnosis.",
        diagnosis_zh="关节液中找到尿酸盐结晶即可确诊；血尿酸检测和关节超声也有助于诊断。",
        treatment="Attacks are treated with anti-inflammatory drugs, colchicine or steroids, and long-term urate-lowering medicine such as allopurinol prevents further attacks.",
        treatment_zh="急性发作时用非甾体抗炎药、秋水仙碱或糖皮质激素治疗，长期使用别嘌醇等降尿酸药物可以预防复发。",
        prevention="Limiting alcohol, sugary drinks and purine-rich foods, staying hydrated and keeping a healthy weight help prevent attacks.",
        prevention_zh="限制饮酒、含糖饮料和高嘌呤食物，多喝水并保持健康体重，有助于预防发作。",
        urgent="a hot swollen joint with fever or chills, which could be a joint infection",
        urgent_zh="关节红肿热痛并伴有发热或寒战，这可能是关节感染",
    ),
    Condition(
        key="osteoporosis", en="osteoporosis", zh="骨质疏松症",
        symptoms="Osteoporosis has no symptoms until a bone breaks; signs can include loss of height, a stooped back or fractures from minor falls.",
        symptoms_zh="骨质疏松在发生骨折前通常没有症状；可能表现为身高变矮、驼背或轻微跌倒就骨折。",
        causes="Bone mass falls with age, especially after menopause; low calcium and vitamin D, smoking, heavy drinking, long-term steroids and low body weight add to the risk.",
        causes_zh="骨量随年龄下降，绝经后尤为明显；钙和维生素D不足、吸烟、过量饮酒、长期使用激素和体重过低都会增加风险。",
        diagnosis="A DXA bone density scan with a T-score of -2.5 or lower confirms it, as does a fragility fracture.",
        diagnosis_zh="双能X线骨密度检查T值≤-2.5，或发生脆性骨折，即可诊断。",
        treatment="Treatment includes calcium and vitamin D, weight-bearing exercise, fall prevention and bone-protecting medicines such as bisphosphonates.",
        treatment_zh="治疗包括补充钙和维生素D、负重运动、预防跌倒，以及使用双膦酸盐等抗骨质疏松药物。",
        prevention="Regular weight-bearing exercise, enough calcium and vitamin D, not smoking and limiting alcohol build and keep bone strength.",
        prevention_zh="坚持负重运动、摄入足够的钙和维生素D、不吸烟并限制饮酒，有助于维持骨骼强度。",
        urgent="sudden severe back pain or inability to bear weight after a fall",
        urgent_zh="突发严重腰背痛，或跌倒后无法站立行走",
    ),
    Condition(
        key="hypothyroidism", en="hypothyroidism", zh="甲状腺功能减退症",
        symptoms="An underactive thyroid causes tiredness, feeling cold, weight gain, constipation, dry skin, low mood and slowed thinking.",
        symptoms_zh="甲减表现为乏力、怕冷、体重增加、便秘、皮肤干燥、情绪低落和反应迟钝。",
        causes="The most common cause is autoimmune Hashimoto's thyroiditis; thyroid surgery, radioactive iodine and iodine deficiency are other causes.",
        causes_zh="最常见的原因是自身免疫性桥本甲状腺炎；甲状腺手术、放射性碘治疗和碘缺乏也是常见原因。",
        diagnosis="A blood test showing a high TSH with a low free T4 confirms it.",
        diagnosis_zh="血液检查显示TSH升高、游离T4降低即可确诊。",
        treatment="Daily levothyroxine replaces the missing hormone, with the dose adjusted by repeat TSH tests every 6 to 8 weeks until stable.",
        treatment_zh="每天服用左甲状腺素补充缺乏的激素，每6到8周复查TSH调整剂量直至稳定。",
        prevention="Autoimmune hypothyroidism cannot be prevented, but adequate iodine intake and checking thyroid function when symptoms appear allow early treatment.",
        prevention_zh="自身免疫性甲减无法预防，但保证适量碘摄入、出现症状时及时检查甲状腺功能，可以早期治疗。",
        urgent="extreme drowsiness, confusion or a very low body temperature",
        urgent_zh="极度嗜睡、意识模糊或体温明显过低",
    ),
    Condition(
        key="hyperthyroidism", en="hyperthyroidism", zh="甲状腺功能亢进症",
        symptoms="An overactive thyroid causes weight loss despite good appetite, a fast heartbeat, tremor, sweating, heat intolerance, anxiety and sometimes bulging eyes.",
        symptoms_zh="甲亢表现为食欲好但体重下降、心跳加快、手抖、多汗、怕热、焦虑，有时出现突眼。",
        causes="Graves' disease is the most common cause; thyroid nodules and thyroiditis are others.",
        causes_zh="最常见的原因是格雷夫斯病；甲状腺结节和甲状腺炎也可引起。",
        diagnosis="Blood tests show a low TSH with high free T4 or T3, and antibody tests or a thyroid scan identify the cause.",
        diagnosis_zh="血液检查显示TSH降低、游离T4或T3升高，抗体检测或甲状腺扫描可以明确病因。",
        treatment="Options are antithyroid medicines such as methimazole, radioactive iodine or surgery, with beta blockers to control symptoms early on.",
        treatment_zh="治疗方法包括甲巯咪唑等抗甲状腺药物、放射性碘治疗或手术，早期可用β受体阻滞剂控制症状。",
        prevention="It usually cannot be prevented, but not smoking lowers the risk of eye problems in Graves' disease.",
        prevention_zh="通常无法预防，但戒烟可以降低格雷夫斯病眼部病变的风险。",
        urgent="a very fast heart rate, high fever, confusion or severe agitation",
        urgent_zh="心率极快、高热、意识模糊或严重烦躁",
    ),
    Condition(
        key="uti", en="a urinary tract infection", zh="尿路感染",
        symptoms="A bladder infection causes burning when urinating, needing to urinate often and urgently, lower abdominal pain and sometimes cloudy or bloody urine.",
        symptoms_zh="膀胱感染表现为排尿灼痛、尿频、尿急、下腹痛，有时尿液浑浊或带血。",
        causes="Bacteria, usually E. coli from the gut, enter the urinary tract; women, sexual activity, pregnancy, diabetes and catheters increase the risk.",
        causes_zh="细菌（通常是来自肠道的大肠杆菌）进入尿路引起感染；女性、性生活、怀孕、糖尿病和导尿管会增加风险。",
        diagnosis="A urine dipstick and urine culture confirm the infection and guide the choice of antibiotic.",
        diagnosis_zh="尿常规和尿培养可以确诊感染并指导抗生素选择。",
        treatment="A short course of antibiotics prescribed by a doctor usually clears it within a few days, along with drinking enough fluids.",
        treatment_zh="通常在医生指导下短程使用抗生素，几天内即可好转，同时注意多喝水。",
        prevention="Drinking enough water, not holding urine for long, urinating after sex and wiping front to back lower the risk.",
        prevention_zh="多喝水、不要长时间憋尿、性生活后排尿、便后从前向后擦拭，可以降低风险。",
        urgent="fever, back or flank pain, vomiting, or symptoms during pregnancy",
        urgent_zh="发热、腰背部或腰侧疼痛、呕吐，或孕期出现尿路感染症状",
    ),
    Condition(
        key="kidney_stones", en="kidney stones", zh="肾结石",
        symptoms="A stone moving down the ureter causes sudden, severe cramping pain in the side or back that spreads to the groin, with nausea and sometimes blood in the urine.",
        symptoms_zh="结石下移到输尿管时会引起突发的腰腹部剧烈绞痛，并向腹股沟放射，伴恶心，有时出现血尿。",
        causes="Stones form when minerals such as calcium oxalate or uric acid crystallise in concentrated urine; low fluid intake, a salty diet and family history contribute.",
        causes_zh="尿液浓缩时草酸钙或尿酸等成分结晶形成结石；饮水少、高盐饮食和家族史是常见因素。",
        diagnosis="A low-dose CT scan or ultrasound shows the stone, and urine tests look for blood and infection.",
        diagnosis_zh="低剂量CT或超声可以发现结石，尿液检查可了解有无血尿和感染。",
        treatment="Small stones usually pass with painkillers and fluids, sometimes helped by medicine that relaxes the ureter; larger stones may need shock-wave lithotripsy or endoscopic removal.",
        treatment_zh="小结石通常在止痛和多饮水后自行排出，有时配合松弛输尿管的药物；较大结石可能需要体外冲击波碎石或内镜取石。",
        prevention="Drinking enough fluid to pass about 2 to 2.5 litres of urine a day, reducing salt and limiting animal protein help prevent new stones.",
        prevention_zh="每天多喝水，使尿量达到约2到2.5升，减少盐分和动物蛋白摄入，有助于预防结石复发。",
        urgent="fever or chills with the pain, being unable to pass urine, or pain not controlled by medicine",
        urgent_zh="疼痛伴发热或寒战、无法排尿，或药物无法控制的疼痛",
    ),
    Condition(
        key="coronary_artery_disease", en="coronary artery disease", zh="冠心病",
        symptoms="The classic symptom is angina: pressure or tightness in the chest during exertion or stress that eases with rest, sometimes spreading to the arm, neck or jaw, with breathlessness.",
        symptoms_zh="典型症状是心绞痛：劳累或情绪激动时胸部压迫感或紧缩感，休息后缓解，可放射到手臂、颈部或下颌，伴气短。",
        causes="Fatty plaques narrow the heart's arteries; smoking, high blood pressure, high cholesterol, diabetes, obesity, inactivity and family history are major risk factors.",
        causes_zh="动脉粥样斑块使冠状动脉狭窄；吸烟、高血压、高胆固醇、糖尿病、肥胖、缺乏运动和家族史是主要危险因素。",
        diagnosis="An ECG, blood tests, exercise or imaging stress tests, CT coronary angiography or invasive coronary angiography are used to diagnose it.",
        diagnosis_zh="心电图、血液检查、运动负荷试验或负荷影像、冠脉CT血管造影或冠状动脉造影可用于诊断。",
        treatment="Treatment includes lifestyle change, aspirin, statins, blood pressure control and anti-anginal medicines, with stents or bypass surgery for some patients.",
        treatment_zh="治疗包括改善生活方式、阿司匹林、他汀类药物、控制血压和抗心绞痛药物，部分患者需要支架或搭桥手术。",
        prevention="Not smoking, a heart-healthy diet, regular activity, and controlling blood pressure, cholesterol and blood sugar prevent most heart disease.",
        prevention_zh="不吸烟、健康饮食、规律运动，并控制血压、血脂和血糖，可以预防大多数冠心病。",
        urgent="chest pain lasting more than a few minutes, pain at rest, or chest pain with sweating, nausea or breathlessness — call emergency services",
        urgent_zh="胸痛持续超过几分钟、休息时也胸痛，或胸痛伴出汗、恶心、气短——应立即拨打急救电话",
    ),
    Condition(
        key="heart_failure", en="heart failure", zh="心力衰竭",
        symptoms="Heart failure causes breathlessness on exertion or when lying flat, swollen ankles and legs, tiredness and rapid weight gain from fluid.",
        symptoms_zh="心衰表现为活动后或平躺时气短、脚踝和下肢水肿、乏力，以及因水钠潴留导致体重快速增加。",
        causes="The heart cannot pump well enough, most often after a heart attack or long-standing high blood pressure; valve disease, cardiomyopathy and arrhythmias are other causes.",
        causes_zh="心脏泵血能力下降，最常见于心肌梗死后或长期高血压；心脏瓣膜病、心肌病和心律失常也可导致。",
        diagnosis="An echocardiogram measures heart function, and a blood test for BNP or NT-proBNP, an ECG and a chest X-ray support the diagnosis.",
        diagnosis_zh="超声心动图可评估心脏功能，血BNP或NT-proBNP、心电图和胸片有助于诊断。",
        treatment="Medicines such as ACE inhibitors or ARNIs, beta blockers, SGLT2 inhibitors and diuretics improve symptoms and survival, together with limiting salt and daily weighing.",
        treatment_zh="ACEI或ARNI、β受体阻滞剂、SGLT2抑制剂和利尿剂等药物可以改善症状和预后，同时需要限盐并每天称体重。",
        prevention="Controlling blood pressure, treating heart disease early, not smoking and limiting alcohol reduce the risk.",
        prevention_zh="控制血压、及早治疗心脏疾病、戒烟和限酒，可以降低心衰风险。",
        urgent="severe breathlessness, pink frothy sputum, chest pain or fainting",
        urgent_zh="严重呼吸困难、咳粉红色泡沫痰、胸痛或晕厥",
    ),
    Condition(
        key="atrial_fibrillation", en="atrial fibrillation", zh="心房颤动",
        symptoms="It can cause palpitations, an irregular pulse, breathlessness, tiredness and dizziness, though some people have no symptoms.",
        symptoms_zh="可表现为心悸、脉搏不规则、气短、乏力和头晕，也有人没有任何症状。",
        causes="Age, high blood pressure, heart disease, thyroid overactivity, heavy alcohol use, obesity and sleep apnoea all raise the risk.",
        causes_zh="年龄增长、高血压、心脏病、甲亢、大量饮酒、肥胖和睡眠呼吸暂停都会增加风险。",
        diagnosis="An ECG recording the irregular rhythm confirms it; a Holter monitor can catch episodes that come and go.",
        diagnosis_zh="心电图记录到不规则的心律即可确诊；动态心电图可以捕捉阵发性发作。",
        treatment="Treatment controls the heart rate or rhythm and, for most patients, uses anticoagulants to prevent stroke, based on a stroke risk score.",
        treatment_zh="治疗包括控制心室率或恢复节律，并根据卒中风险评分为多数患者使用抗凝药预防卒中。",
        prevention="Controlling blood pressure, limiting alcohol, keeping a healthy weight and treating sleep apnoea lower the risk.",
        prevention_zh="控制血压、限制饮酒、保持健康体重并治疗睡眠呼吸暂停，可以降低风险。",
        urgent="chest pain, fainting, severe breathlessness or any signs of stroke",
        urgent_zh="胸痛、晕厥、严重气短或任何卒中征象",
    ),
    Condition(
        key="stroke", en="stroke", zh="脑卒中",
        symptoms="Stroke symptoms come on suddenly: face drooping, arm or leg weakness, slurred speech, loss of vision, confusion or a severe headache.",
        symptoms_zh="卒中症状突然出现：口角歪斜、一侧肢体无力、言语不清、视力丧失、意识模糊或剧烈头痛。",
        causes="Most strokes are caused by a clot blocking a brain artery and some by bleeding; high blood pressure, atrial fibrillation, smoking, diabetes and high cholesterol are major risk factors.",
        causes_zh="大多数卒中由血栓阻塞脑动脉引起，少数为脑出血；高血压、心房颤动、吸烟、糖尿病和高胆固醇是主要危险因素。",
        diagnosis="An urgent CT or MRI scan of the brain shows whether the stroke is due to a clot or bleeding, which determines treatment.",
        diagnosis_zh="紧急头颅CT或磁共振检查可以区分缺血性还是出血性卒中，从而决定治疗方案。",
        treatment="Clot-dissolving medicine or clot removal can help if given within hours, followed by rehabilitation and medicines to prevent another stroke.",
        treatment_zh="在发病数小时内进行溶栓或取栓治疗可以改善预后，之后需要康复训练和药物预防复发。",
        prevention="Controlling blood pressure, treating atrial fibrillation, not smoking, being active and managing cholesterol and diabetes prevent many strokes.",
        prevention_zh="控制血压、治疗房颤、戒烟、规律运动并管理血脂和血糖，可以预防大部分卒中。",
        urgent="any sudden face droop, arm weakness or speech difficulty — call emergency services immediately and note the time symptoms started",
        urgent_zh="任何突发的口角歪斜、手臂无力或说话困难——应立即拨打急救电话并记下发病时间",
    ),
    Condition(
        key="depression", en="depression", zh="抑郁症",
        symptoms="Depression causes persistent low mood or loss of interest for at least two weeks, with changes in sleep and appetite, tiredness, poor concentration, feelings of worthlessness and sometimes thoughts of death.",
        symptoms_zh="抑郁症表现为持续两周以上的情绪低落或兴趣减退，伴睡眠和食欲改变、乏力、注意力下降、无价值感，有时出现轻生念头。",
        causes="It arises from a mix of genetic, biological, psychological and social factors such as stressful life events, chronic illness and isolation.",
        causes_zh="由遗传、生物、心理和社会因素共同作用引起，如重大生活事件、慢性疾病和社会孤立。",
        diagnosis="A clinician diagnoses it through an interview, often using questionnaires such as the PHQ-9, and checks for medical causes like thyroid disease.",
        diagnosis_zh="由专业人员通过访谈诊断，常借助PHQ-9等量表，并排除甲状腺疾病等躯体原因。",
        treatment="Psychological therapies such as cognitive behavioural therapy, antidepressant medicines, or both are effective, together with exercise and social support.",
        treatment_zh="认知行为治疗等心理治疗、抗抑郁药物或两者联合都有效，同时配合运动和社会支持。",
        prevention="Regular exercise, good sleep, staying connected with others and seeking help early during stressful times reduce the risk.",
        prevention_zh="规律运动、良好睡眠、保持社会联系，并在压力大时及早求助，可以降低风险。",
        urgent="thoughts of self-harm or suicide — contact emergency services or a crisis line right away",
        urgent_zh="出现自伤或自杀念头——应立即联系急救或心理危机干预热线",
    ),
    Condition(
        key="anxiety", en="generalised anxiety disorder", zh="广泛性焦虑障碍",
        symptoms="It causes excessive, hard-to-control worry on most days for at least six months, with restlessness, muscle tension, irritability, poor sleep and trouble concentrating.",
        symptoms_zh="表现为至少六个月大多数时间过度且难以控制的担忧，伴坐立不安、肌肉紧张、易激惹、睡眠差和注意力不集中。",
        causes="Genetics, temperament, long-term stress and other health problems all contribute.",
        causes_zh="遗传、性格特点、长期压力和其他健康问题都可能参与发病。",
        diagnosis="It is diagnosed through a clinical interview, sometimes with the GAD-7 questionnaire, after ruling out causes such as thyroid overactivity or caffeine excess.",
        diagnosis_zh="通过临床访谈诊断，可借助GAD-7量表，并排除甲亢或过量咖啡因等原因。",
        treatment="Cognitive behavioural therapy and medicines such as SSRIs are effective; relaxation techniques and exercise also help.",
        treatment_zh="认知行为治疗和SSRI类药物都有效，放松训练和运动也有帮助。",
        prevention="Regular exercise, limiting caffeine and alcohol, good sleep and learning stress management skills can lower the risk.",
        prevention_zh="规律运动、限制咖啡因和酒精、保证睡眠并学习压力管理技巧，可以降低风险。",
        urgent="panic with chest pain that could be a heart problem, or thoughts of self-harm",
        urgent_zh="惊恐发作伴胸痛（需排除心脏问题），或出现自伤念头",
    ),
    Condition(
        key="insomnia", en="insomnia", zh="失眠",
        symptoms="Insomnia means difficulty falling asleep, staying asleep or waking too early at least three nights a week, with daytime tiredness, irritability or poor concentration.",
        symptoms_zh="失眠是指每周至少三晚入睡困难、睡眠维持困难或早醒，并导致白天疲倦、烦躁或注意力下降。",
        causes="Stress, irregular schedules, caffeine, screens before bed, pain, anxiety, depression and some medicines are common causes.",
        causes_zh="常见原因有压力、作息不规律、咖啡因、睡前使用电子屏幕、疼痛、焦虑、抑郁和某些药物。",
        diagnosis="It is diagnosed from the sleep history, often with a two-week sleep diary; a sleep study is used if sleep apnoea is suspected.",
        diagnosis_zh="根据睡眠史诊断，常需记录两周睡眠日记；怀疑睡眠呼吸暂停时需做睡眠监测。",
        treatment="Cognitive behavioural therapy for insomnia is the first-line treatment; sleeping pills are only for short-term use under medical advice.",
        treatment_zh="失眠的认知行为治疗是一线方法；安眠药只能在医生指导下短期使用。",
        prevention="Keeping a regular wake-up time, limiting caffeine after noon, avoiding screens before bed and keeping the bedroom dark and quiet support good sleep.",
        prevention_zh="固定起床时间、午后少喝咖啡、睡前远离电子屏幕、保持卧室黑暗安静，有助于良好睡眠。",
        urgent="falling asleep while driving, loud snoring with pauses in breathing, or insomnia with thoughts of self-harm",
        urgent_zh="开车时睡着、打鼾严重并有呼吸暂停，或失眠伴有自伤念头",
    ),
    Condition(
        key="allergic_rhinitis", en="allergic rhinitis", zh="过敏性鼻炎",
        symptoms="It causes sneezing, an itchy and runny nose, nasal congestion and itchy, watery eyes when exposed to allergens.",
        symptoms_zh="接触过敏原后出现打喷嚏、鼻痒、流清涕、鼻塞以及眼痒流泪。",
        causes="The immune system overreacts to allergens such as pollen, dust mites, pet dander or mould.",
        causes_zh="免疫系统对花粉、尘螨、宠物皮屑或霉菌等过敏原反应过度。",
        diagnosis="Diagnosis is based on the symptom pattern, and skin prick or blood IgE tests identify the allergens.",
        diagnosis_zh="根据症状特点诊断，皮肤点刺试验或血清特异性IgE检测可以明确过敏原。",
        treatment="Steroid nasal sprays are the most effective treatment, and non-drowsy antihistamines such as loratadine or cetirizine relieve itching and sneezing.",
        treatment_zh="鼻用糖皮质激素喷剂效果最好，氯雷他定或西替利嗪等非镇静抗组胺药可缓解鼻痒和喷嚏。",
        prevention="Reducing exposure, for example washing bedding hot to kill dust mites and keeping windows closed on high-pollen days, helps prevent symptoms.",
        prevention_zh="减少接触过敏原，例如用热水清洗床品除螨、花粉浓度高时关闭门窗，有助于预防症状。",
        urgent="wheezing or difficulty breathing",
        urgent_zh="出现喘息或呼吸困难",
    ),
    Condition(
        key="eczema", en="atopic eczema", zh="特应性皮炎（湿疹）",
        symptoms="Eczema causes dry, itchy, inflamed patches of skin, often in the elbow and knee creases, which can crack, weep or thicken with scratching.",
        symptoms_zh="湿疹表现为皮肤干燥、瘙痒和红斑，常见于肘窝和腘窝，搔抓后可出现皲裂、渗液或皮肤增厚。",
        causes="A weakened skin barrier combined with immune overactivity, often running in families with asthma and hay fever; soaps, heat, sweat and stress trigger flares.",
        causes_zh="皮肤屏障功能减弱加上免疫反应过度，常有哮喘或过敏性鼻炎家族史；肥皂、高温、出汗和压力可诱发加重。",
        diagnosis="It is diagnosed by the appearance and history of the rash; allergy tests are only useful in selected cases.",
        diagnosis_zh="根据皮疹表现和病史诊断；过敏原检测仅在部分情况下有帮助。",
        treatment="Daily generous use of moisturisers and topical corticosteroids for flares are the mainstays, with other prescription creams for difficult cases.",
        treatment_zh="每天大量使用保湿剂，发作时外用糖皮质激素是主要治疗，难治者可用其他处方外用药。",
        prevention="Moisturising every day, using soap-free washes, avoiding known irritants and keeping nails short reduce flares.",
        prevention_zh="每天保湿、使用无皂基清洁产品、避免已知刺激物并剪短指甲，可以减少发作。",
        urgent="rapidly spreading painful rash, blisters or fever, which may mean infection",
        urgent_zh="皮疹迅速扩散并疼痛、出现水疱或发热，可能提示感染",
    ),
    Condition(
        key="acne", en="acne", zh="痤疮",
        symptoms="Acne causes blackheads, whiteheads, red spots and sometimes painful deep cysts on the face, chest and back.",
        symptoms_zh="痤疮表现为面部、胸背部的黑头、白头粉刺、红色丘疹，有时出现疼痛的深部囊肿。",
        causes="Hormones increase oil production, hair follicles become blocked and bacteria cause inflammation; family history and some medicines contribute.",
        causes_zh="激素使皮脂分泌增加，毛囊堵塞，细菌引起炎症；家族史和某些药物也有影响。",
        diagnosis="It is diagnosed by looking at the skin and grading how severe it is.",
        diagnosis_zh="通过观察皮损即可诊断，并评估严重程度。",
        treatment="Topical retinoids and benzoyl peroxide treat mild acne; antibiotics, hormonal treatment or isotretinoin are used for more severe acne under medical care.",
        treatment_zh="轻度痤疮可外用维A酸类和过氧化苯甲酰；较重者在医生指导下使用抗生素、激素治疗或异维A酸。",
        prevention="Washing gently twice a day, using non-comedogenic products and not squeezing spots help prevent scarring and flares.",
        prevention_zh="每天温和洁面两次、使用不致粉刺的护肤品、不要挤压痘痘，有助于预防加重和留疤。",
        urgent="painful nodules that leave scars or acne that severely affects mood",
        urgent_zh="出现留疤的疼痛结节，或痤疮严重影响情绪",
    ),
    Condition(
        key="hyperlipidemia", en="high cholesterol", zh="高脂血症",
        symptoms="High cholesterol itself causes no symptoms and is found by a blood test; over years it raises the risk of heart attack and stroke.",
        symptoms_zh="高血脂本身没有症状，需要通过验血发现；长期会增加心肌梗死和卒中的风险。",
        causes="Diets high in saturated fat, excess weight, inactivity, smoking, diabetes, hypothyroidism and inherited conditions such as familial hypercholesterolaemia raise blood lipids.",
        causes_zh="饱和脂肪摄入过多、超重、缺乏运动、吸烟、糖尿病、甲减以及家族性高胆固醇血症等遗传因素都会使血脂升高。",
        diagnosis="A lipid panel measures total cholesterol, LDL cholesterol, HDL cholesterol and triglycerides, interpreted alongside overall cardiovascular risk.",
        diagnosis_zh="血脂检查包括总胆固醇、低密度脂蛋白胆固醇、高密度脂蛋白胆固醇和甘油三酯，需要结合整体心血管风险评估。",
        treatment="Diet and exercise come first, and statins such as atorvastatin are used when cardiovascular risk is high or LDL cholesterol stays raised.",
        treatment_zh="首先调整饮食和增加运动，心血管风险高或低密度脂蛋白持续升高时使用阿托伐他汀等他汀类药物。",
        prevention="Eating more vegetables, whole grains and unsaturated fats, staying active, keeping a healthy weight and not smoking keep lipids in check.",
        prevention_zh="多吃蔬菜、全谷物和不饱和脂肪，坚持运动、保持健康体重并戒烟，有助于控制血脂。",
        urgent="chest pain, sudden weakness or trouble speaking, which could signal a heart attack or stroke",
        urgent_zh="胸痛、突发肢体无力或说话困难，可能是心肌梗死或卒中的信号",
    ),
    Condition(
        key="fatty_liver", en="non-alcoholic fatty liver disease", zh="非酒精性脂肪性肝病",
        symptoms="Fatty liver usually causes no symptoms; some people notice tiredness or discomfort in the upper right abdomen.",
        symptoms_zh="脂肪肝通常没有症状，部分人会感到乏力或右上腹不适。",
        causes="Fat builds up in the liver in people with excess weight, type 2 diabetes, high triglycerides or insulin resistance, without heavy alcohol use.",
        causes_zh="在超重、2型糖尿病、高甘油三酯或胰岛素抵抗的人群中，肝脏内脂肪堆积，且与大量饮酒无关。",
        diagnosis="It is usually found on an ultrasound or from raised liver enzymes, with scores or elastography to assess scarring.",
        diagnosis_zh="通常通过超声或肝酶升高发现，可以用评分或弹性成像评估肝纤维化程度。",
        treatment="Losing 7 to 10 percent of body weight through diet and exercise is the most effective treatment, together with controlling diabetes and cholesterol.",
        treatment_zh="通过饮食和运动减轻体重7%到10%是最有效的治疗，同时控制血糖和血脂。",
        prevention="A balanced diet low in sugar and refined carbohydrates, regular exercise and a healthy weight prevent it.",
        prevention_zh="少糖和精制碳水的均衡饮食、规律运动和健康体重可以预防脂肪肝。",
        urgent="yellowing of the skin or eyes, a swollen abdomen, vomiting blood or confusion",
        urgent_zh="皮肤或眼睛发黄、腹部膨隆、呕血或意识模糊",
    ),
    Condition(
        key="hepatitis_b", en="chronic hepatitis B", zh="慢性乙型肝炎",
        symptoms="Many people have no symptoms for years; others have tiredness, poor appetite, discomfort under the right ribs and, in flares, yellow skin and dark urine.",
        symptoms_zh="很多人多年没有症状；部分人有乏力、食欲差、右肋下不适，病情活动时可出现皮肤发黄和尿色加深。",
        causes="It is caused by the hepatitis B virus, spread through blood, sexual contact and from mother to baby at birth; it is not spread by sharing meals.",
        causes_zh="由乙肝病毒引起，通过血液、性接触和母婴传播；一起吃饭不会传染。",
        diagnosis="Blood tests for HBsAg and other markers, HBV DNA, liver enzymes and an ultrasound or elastography assess the infection and liver damage.",
        diagnosis_zh="通过乙肝表面抗原等血清标志物、HBV DNA、肝功能以及超声或弹性成像评估感染状态和肝损伤程度。",
        treatment="Antiviral tablets such as entecavir or tenofovir suppress the virus in people who need treatment, with regular monitoring for life.",
        treatment_zh="需要治疗的患者可服用恩替卡韦或替诺福韦等抗病毒药物抑制病毒，并需终身定期随访。",
        prevention="The hepatitis B vaccine, screening in pregnancy with vaccination of newborns, safe injections and condoms prevent infection.",
        prevention_zh="接种乙肝疫苗、孕期筛查并为新生儿及时接种、安全注射和使用安全套可以预防感染。",
        urgent="yellow eyes with confusion, vomiting blood or a rapidly swelling abdomen",
        urgent_zh="眼睛发黄伴意识模糊、呕血或腹部迅速膨隆",
    ),
    Condition(
        key="gastroenteritis", en="acute gastroenteritis", zh="急性胃肠炎",
        symptoms="It causes diarrhoea, vomiting, stomach cramps and sometimes fever, usually settling within a few days.",
        symptoms_zh="表现为腹泻、呕吐、腹部绞痛，有时发热，通常几天内好转。",
        causes="Viruses such as norovirus and rotavirus are the usual cause, and bacteria from contaminated food or water cause some cases.",
        causes_zh="通常由诺如病毒、轮状病毒等病毒引起，部分由被污染的食物或水中的细菌引起。",
        diagnosis="It is diagnosed from the symptoms; stool tests are used when there is blood, high fever or symptoms last longer than a week.",
        diagnosis_zh="根据症状诊断；如果出现血便、高热或症状超过一周，需要做粪便检查。",
        treatment="The key is replacing fluids with small frequent sips of oral rehydration solution; most cases do not need antibiotics.",
        treatment_zh="关键是少量多次口服补液盐补充水分；大多数情况不需要抗生素。",
        prevention="Hand washing, safe food handling, clean drinking water and rotavirus vaccination for infants prevent infection.",
        prevention_zh="勤洗手、注意食品安全、饮用清洁水以及为婴儿接种轮状病毒疫苗，可以预防感染。",
        urgent="signs of dehydration such as very little urine, dizziness or a dry mouth, blood in the stool, or vomiting that prevents drinking",
        urgent_zh="尿量明显减少、头晕、口干等脱水表现，便中带血，或呕吐严重无法喝水",
    ),
    Condition(
        key="ibs", en="irritable bowel syndrome", zh="肠易激综合征",
        symptoms="It causes recurring abdominal pain linked to bowel movements, bloating, and diarrhoea, constipation or both.",
        symptoms_zh="表现为反复发作的与排便相关的腹痛、腹胀，伴腹泻、便秘或两者交替。",
        causes="It involves a sensitive gut and altered gut-brain signalling; stress, certain foods and previous gut infections can trigger it.",
        causes_zh="与肠道敏感和肠-脑调节异常有关；压力、某些食物和既往肠道感染可诱发。",
        diagnosis="It is diagnosed from the typical symptom pattern after simple tests rule out other conditions, especially when warning signs are absent.",
        diagnosis_zh="在没有报警症状的情况下，根据典型症状并通过简单检查排除其他疾病即可诊断。",
        treatment="Dietary changes such as a low-FODMAP approach, soluble fibre, stress management and symptom-targeted medicines help.",
        treatment_zh="调整饮食（如低FODMAP饮食）、补充可溶性膳食纤维、管理压力以及针对症状用药都有帮助。",
        prevention="Regular meals, identifying trigger foods, exercise and managing stress reduce flares.",
        prevention_zh="规律进餐、找出诱发食物、坚持运动和管理压力，可以减少发作。",
        urgent="rectal bleeding, weight loss, anaemia or symptoms starting after age 50",
        urgent_zh="便血、体重下降、贫血或50岁以后新出现的症状",
    ),
    Condition(
        key="constipation", en="constipation", zh="便秘",
        symptoms="Constipation means fewer than three bowel movements a week, hard stools, straining or a feeling of incomplete emptying.",
        symptoms_zh="便秘是指每周排便少于三次、大便干硬、排便费力或有排便不尽感。",
        causes="Low fibre and fluid intake, inactivity, ignoring the urge to go, pregnancy and medicines such as opioids and iron are common causes.",
        causes_zh="常见原因有膳食纤维和水分摄入不足、活动少、经常忽视便意、怀孕以及阿片类药物和铁剂等药物。",
        diagnosis="It is diagnosed from the history, with tests only if there are warning signs or a sudden change in bowel habit.",
        diagnosis_zh="根据病史诊断，只有出现报警症状或排便习惯突然改变时才需要检查。",
        treatment="More fibre, fluids and activity help first; bulk-forming or osmotic laxatives such as polyethylene glycol can be used if needed.",
        treatment_zh="首先增加膳食纤维、饮水和运动；必要时可用容积性或渗透性泻药，如聚乙二醇。",
        prevention="Eating fruit, vegetables and whole grains, drinking enough water, exercising and going when you feel the urge keep bowels regular.",
        prevention_zh="多吃水果、蔬菜和全谷物，充足饮水，坚持运动，有便意时及时排便，有助于保持排便规律。",
        urgent="blood in the stool, severe abdominal pain, vomiting or being unable to pass gas",
        urgent_zh="便中带血、剧烈腹痛、呕吐或无法排气",
    ),
    Condition(
        key="low_back_pain", en="low back pain", zh="腰痛",
        symptoms="It causes aching or stiffness in the lower back, sometimes spreading into the buttock or leg, often worse with certain movements.",
        symptoms_zh="表现为下腰部酸痛或僵硬，有时放射到臀部或腿部，某些动作时加重。",
        causes="Most back pain is non-specific, from strained muscles or ligaments, poor posture or lifting; a slipped disc can press on a nerve and cause sciatica.",
        causes_zh="大多数腰痛为非特异性，由肌肉韧带劳损、不良姿势或搬重物引起；椎间盘突出压迫神经可引起坐骨神经痛。",
        diagnosis="It is assessed by history and examination; scans are not needed unless there are warning signs or symptoms persist despite treatment.",
        diagnosis_zh="通过病史和体格检查评估；除非有报警症状或治疗后仍持续不缓解，一般不需要影像检查。",
        treatment="Staying active, heat, simple painkillers and physiotherapy exercises are recommended; bed rest slows recovery.",
        treatment_zh="建议保持活动、热敷、使用简单止痛药并进行康复锻炼；卧床休息反而会延缓恢复。",
        prevention="Core strengthening, regular activity, lifting with bent knees and taking breaks from sitting help prevent it.",
        prevention_zh="加强核心肌群、规律运动、屈膝搬物并避免久坐，有助于预防腰痛。",
        urgent="numbness around the genitals or buttocks, loss of bladder or bowel control, leg weakness, or back pain with fever",
        urgent_zh="会阴或臀部麻木、大小便失禁、下肢无力，或腰痛伴发热",
    ),
    Condition(
        key="obesity", en="obesity", zh="肥胖症",
        symptoms="Obesity is excess body fat, usually defined by a BMI of 30 or more in adults (28 or more under Chinese standards), and can cause breathlessness, joint pain, snoring and tiredness.",
        symptoms_zh="肥胖是体内脂肪过多，成人一般以BMI≥30定义（中国标准为BMI≥28），可伴有气短、关节痛、打鼾和乏力。",
        causes="Energy intake above needs over time, together with genetics, sleep, medicines, stress and an environment with easy access to high-calorie food.",
        causes_zh="长期能量摄入超过消耗，并受遗传、睡眠、药物、压力和高热量食物易得等环境因素影响。",
        diagnosis="BMI and waist circumference are measured, with blood tests for related conditions such as diabetes, high cholesterol and fatty liver.",
        diagnosis_zh="测量BMI和腰围，并通过血液检查筛查糖尿病、高血脂和脂肪肝等相关疾病。",
        treatment="A sustained reduced-calorie diet and more activity are the foundation; medicines or bariatric surgery are options for some people.",
        treatment_zh="持续的限能量饮食和增加运动是基础，部分人可以考虑药物或减重手术。",
        prevention="Regular activity, mostly unprocessed foods, limiting sugary drinks and enough sleep help maintain a healthy weight.",
        prevention_zh="规律运动、以天然食物为主、少喝含糖饮料和充足睡眠，有助于保持健康体重。",
        urgent="severe snoring with breathing pauses and daytime sleepiness, or chest pain on exertion",
        urgent_zh="严重打鼾伴呼吸暂停和白天嗜睡，或活动时胸痛",
    ),
    Condition(
        key="ckd", en="chronic kidney disease", zh="慢性肾脏病",
        symptoms="Early kidney disease has no symptoms; later stages cause swelling of the legs, tiredness, poor appetite, itching and changes in urination.",
        symptoms_zh="早期慢性肾病没有症状；后期可出现下肢水肿、乏力、食欲下降、皮肤瘙痒和排尿改变。",
        causes="Diabetes and high blood pressure are the leading causes; glomerulonephritis, polycystic kidney disease and long-term use of some painkillers are others.",
        causes_zh="糖尿病和高血压是最主要的原因；肾小球肾炎、多囊肾和长期服用某些止痛药也可导致。",
        diagnosis="It is diagnosed when the eGFR is below 60 mL/min/1.73m² or there is protein in the urine for more than three months.",
        diagnosis_zh="eGFR低于60 mL/min/1.73m²或尿蛋白异常持续超过三个月即可诊断。",
        treatment="Treatment controls blood pressure and blood sugar, uses medicines such as ACE inhibitors, ARBs or SGLT2 inhibitors to slow progression, and adjusts drug doses to kidney function.",
        treatment_zh="治疗包括控制血压和血糖，使用ACEI、ARB或SGLT2抑制剂等延缓进展，并根据肾功能调整用药剂量。",
        prevention="Controlling diabetes and blood pressure, avoiding unnecessary anti-inflammatory painkillers and checking kidney function in people at risk prevent or slow it.",
        prevention_zh="控制糖尿病和血压、避免不必要地服用非甾体抗炎药、高危人群定期检查肾功能，可以预防或延缓进展。",
        urgent="very little urine, severe swelling, breathlessness or confusion",
        urgent_zh="尿量极少、严重水肿、呼吸困难或意识模糊",
    ),
    Condition(
        key="tuberculosis", en="tuberculosis", zh="肺结核",
        symptoms="Lung tuberculosis causes a cough lasting more than two weeks, sometimes with blood, plus fever, night sweats and weight loss.",
        symptoms_zh="肺结核表现为咳嗽超过两周，有时痰中带血，并伴有发热、盗汗和体重下降。",
        causes="It is caused by Mycobacterium tuberculosis spread through the air when a person with active lung disease coughs; HIV, diabetes, smoking and malnutrition raise the risk.",
        causes_zh="由结核分枝杆菌引起，活动性肺结核患者咳嗽时经空气传播；艾滋病、糖尿病、吸烟和营养不良会增加风险。",
        diagnosis="A chest X-ray and sputum tests, including smear, culture and rapid molecular tests, confirm active disease.",
        diagnosis_zh="胸部X线和痰液检查（包括涂片、培养和分子快速检测）可以确诊活动性肺结核。",
        treatment="It is cured with a combination of antibiotics taken daily for at least six months; completing the full course prevents drug resistance.",
        treatment_zh="需要联合使用抗结核药物每天服用至少六个月；坚持完成全程治疗可以防止耐药。",
        prevention="Finding and treating cases early, good ventilation, treating latent infection in close contacts and BCG vaccination for infants help prevent spread.",
        prevention_zh="早发现早治疗、保持室内通风、对密切接触者的潜伏感染进行治疗以及为婴儿接种卡介苗，有助于预防传播。",
        urgent="coughing up a lot of blood or severe breathlessness",
        urgent_zh="大量咯血或严重呼吸困难",
    ),
    Condition(
        key="conjunctivitis", en="conjunctivitis", zh="结膜炎",
        symptoms="Pink eye causes redness, a gritty feeling, watering and discharge, with crusting of the eyelids in the morning; allergic forms itch a lot.",
        symptoms_zh="结膜炎表现为眼红、异物感、流泪和分泌物增多，早晨睫毛粘连；过敏性结膜炎以眼痒为主。",
        causes="It is caused by viruses, bacteria or allergies; infectious forms spread easily by hand-to-eye contact.",
        causes_zh="可由病毒、细菌或过敏引起；感染性结膜炎容易通过手眼接触传播。",
        diagnosis="It is diagnosed by examining the eye; swabs are only needed for severe or persistent cases.",
        diagnosis_zh="通过眼部检查诊断；只有严重或持续不愈时才需要取分泌物检查。",
        treatment="Viral conjunctivitis settles on its own with cold compresses; bacterial cases may need antibiotic drops, and allergic cases respond to antihistamine drops.",
        treatment_zh="病毒性结膜炎冷敷后可自行好转；细菌性可能需要抗生素滴眼液，过敏性可用抗组胺滴眼液。",
        prevention="Washing hands, not sharing towels and not touching the eyes prevent spread.",
        prevention_zh="勤洗手、不共用毛巾、不揉眼睛，可以防止传播。",
        urgent="eye pain, reduced vision, strong sensitivity to light, or symptoms in a contact lens wearer",
        urgent_zh="眼痛、视力下降、明显畏光，或佩戴隐形眼镜者出现症状",
    ),
    Condition(
        key="otitis_media", en="middle ear infection", zh="中耳炎",
        symptoms="It causes ear pain, fever and reduced hearing; young children may pull at the ear, be irritable and sleep poorly.",
        symptoms_zh="表现为耳痛、发热和听力下降；幼儿可能抓耳朵、哭闹和睡眠不好。",
        causes="A cold or other upper respiratory infection lets fluid and germs build up behind the eardrum, especially in young children.",
        causes_zh="感冒等上呼吸道感染后，中耳积液并继发感染，幼儿尤其常见。",
        diagnosis="A doctor looks at the eardrum with an otoscope to see bulging or fluid.",
        diagnosis_zh="医生用耳镜检查可见鼓膜膨隆或中耳积液。",
        treatment="Most cases improve within a few days with painkillers; antibiotics are used for young infants, severe symptoms or if it does not improve.",
        treatment_zh="大多数几天内用止痛药即可好转；小婴儿、症状严重或不见好转时使用抗生素。",
        prevention="Avoiding tobacco smoke, keeping vaccinations up to date and not giving babies bottles while lying flat lower the risk.",
        prevention_zh="避免二手烟、按时接种疫苗、不要让婴儿平躺喝奶，可以降低风险。",
        urgent="swelling or redness behind the ear, a stiff neck, high fever or severe drowsiness",
        urgent_zh="耳后红肿、颈部僵硬、高热或严重嗜睡",
    ),
    Condition(
        key="tonsillitis", en="tonsillitis", zh="扁桃体炎",
        symptoms="It causes a sore throat, pain on swallowing, fever, swollen tonsils sometimes with white patches and tender neck glands.",
        symptoms_zh="表现为咽痛、吞咽痛、发热、扁桃体肿大（有时有白色脓点）以及颈部淋巴结肿痛。",
        causes="Most cases are viral; group A streptococcus is the main bacterial cause.",
        causes_zh="大多数由病毒引起；A组链球菌是最主要的细菌性病因。",
        diagnosis="Doctors use symptom scores and a rapid strep test or throat culture to decide whether it is bacterial.",
        diagnosis_zh="医生根据症状评分，并通过链球菌快速检测或咽拭子培养判断是否为细菌感染。",
        treatment="Rest, fluids and painkillers help; confirmed strep infection is treated with a full course of penicillin or amoxicillin.",
        treatment_zh="休息、多喝水和止痛药可缓解症状；确诊链球菌感染需用青霉素或阿莫西林完成全程治疗。",
        prevention="Hand washing and not sharing cups or utensils reduce spread.",
        prevention_zh="勤洗手、不共用杯子和餐具，可以减少传播。",
        urgent="difficulty breathing or swallowing saliva, a muffled voice or one-sided severe throat swelling",
        urgent_zh="呼吸困难或无法吞咽口水、声音含糊，或一侧咽部严重肿胀",
    ),
    Condition(
        key="chickenpox", en="chickenpox", zh="水痘",
        symptoms="Chickenpox causes fever and an itchy rash that turns into fluid-filled blisters and then crusts, appearing in crops over several days.",
        symptoms_zh="水痘表现为发热和瘙痒性皮疹，皮疹演变为水疱后结痂，数天内分批出现。",
        causes="It is caused by the varicella-zoster virus, which spreads very easily through the air and contact with blisters.",
        causes_zh="由水痘-带状疱疹病毒引起，通过空气飞沫和接触疱液极易传播。",
        diagnosis="It is recognised by its typical rash; tests are rarely needed.",
        diagnosis_zh="根据典型皮疹即可诊断，一般无需检查。",
        treatment="Care at home with fluids, paracetamol for fever and calamine or antihistamines for itch is usually enough; aspirin must be avoided in children, and antivirals are used for high-risk people.",
        treatment_zh="通常居家护理即可：多喝水、用对乙酰氨基酚退热、炉甘石洗剂或抗组胺药止痒；儿童禁用阿司匹林，高危人群需用抗病毒药。",
        prevention="Two doses of varicella vaccine prevent most cases, and sick children should stay home until all blisters have crusted.",
        prevention_zh="接种两剂水痘疫苗可以预防大多数病例，患儿应居家隔离至所有水疱结痂。",
        urgent="breathing difficulty, a very red or painful spreading skin area, severe drowsiness or a stiff neck",
        urgent_zh="呼吸困难、皮肤大片红肿疼痛并扩散、严重嗜睡或颈部僵硬",
    ),
    Condition(
        key="shingles", en="shingles", zh="带状疱疹",
        symptoms="Shingles starts with burning or tingling pain on one side of the body, followed by a band of blisters that crust over in 7 to 10 days.",
        symptoms_zh="带状疱疹先出现身体一侧的烧灼样或刺痛感，随后出现带状分布的水疱，7到10天后结痂。",
        causes="The chickenpox virus reactivates from nerves years later, more often with older age or a weakened immune system.",
        causes_zh="潜伏在神经中的水痘病毒多年后重新激活，年龄增长或免疫力下降时更容易发生。",
        diagnosis="The one-sided band-like rash is usually enough for diagnosis.",
        diagnosis_zh="根据单侧带状分布的皮疹通常即可诊断。",
        treatment="Antiviral medicines such as aciclovir or valaciclovir work best within 72 hours of the rash, with painkillers for nerve pain.",
        treatment_zh="在出疹72小时内使用阿昔洛韦或伐昔洛韦等抗病毒药效果最好，同时使用止痛药缓解神经痛。",
        prevention="The shingles vaccine is recommended for older adults and greatly reduces the risk of shingles and lasting nerve pain.",
        prevention_zh="推荐中老年人接种带状疱疹疫苗，可以大大降低发病和后遗神经痛的风险。",
        urgent="a rash near the eye, a weakened immune system, or a widespread rash",
        urgent_zh="皮疹出现在眼睛附近、免疫力低下，或皮疹广泛分布",
    ),
    Condition(
        key="hfmd", en="hand, foot and mouth disease", zh="手足口病",
        symptoms="It usually affects young children with fever, painful mouth sores and a rash or small blisters on the hands, feet and buttocks.",
        symptoms_zh="多见于幼儿，表现为发热、口腔疼痛性溃疡，以及手、足和臀部的皮疹或小水疱。",
        causes="It is caused by enteroviruses such as coxsackievirus and enterovirus 71, spread by saliva, blister fluid and stool.",
        causes_zh="由柯萨奇病毒和肠道病毒71型等肠道病毒引起，通过唾液、疱液和粪便传播。",
        diagnosis="It is diagnosed from the typical rash and mouth sores.",
        diagnosis_zh="根据典型皮疹和口腔溃疡即可诊断。",
        treatment="There is no specific cure; fluids, soft cool foods and paracetamol or ibuprofen for pain and fever are the mainstays while it clears in about a week.",
        treatment_zh="没有特效药，主要是多喝水、吃温凉软食，用对乙酰氨基酚或布洛芬止痛退热，一般一周左右自愈。",
        prevention="Hand washing, cleaning toys and surfaces, and EV71 vaccination where available reduce spread.",
        prevention_zh="勤洗手、清洁玩具和物体表面，以及接种EV71疫苗，可以减少传播。",
        urgent="persistent high fever, drowsiness, limb jerks, vomiting, fast breathing or refusal to drink",
        urgent_zh="持续高热、精神差嗜睡、肢体抖动、呕吐、呼吸急促或拒绝喝水",
    ),
    Condition(
        key="appendicitis", en="appendicitis", zh="阑尾炎",
        symptoms="Pain typically starts around the belly button and moves to the lower right abdomen, getting worse over hours, with loss of appetite, nausea and a mild fever.",
        symptoms_zh="疼痛通常从肚脐周围开始，数小时后转移到右下腹并逐渐加重，伴食欲下降、恶心和低热。",
        causes="The appendix becomes blocked and inflamed, and without treatment it can burst.",
        causes_zh="阑尾腔阻塞后发生炎症，如不治疗可能穿孔。",
        diagnosis="Examination, blood tests showing raised white cells, and ultrasound or CT confirm it.",
        diagnosis_zh="通过体格检查、血常规白细胞升高以及超声或CT确诊。",
        treatment="Most people need surgery to remove the appendix, usually by keyhole surgery, along with antibiotics.",
        treatment_zh="大多数患者需要手术切除阑尾，通常采用腹腔镜手术，并配合抗生素治疗。",
        prevention="There is no proven way to prevent it; the important thing is to seek care early when typical pain appears.",
        prevention_zh="目前没有确切的预防方法，关键是出现典型腹痛时及早就医。",
        urgent="worsening pain in the lower right abdomen, pain that suddenly spreads across the abdomen, or pain with fever and vomiting",
        urgent_zh="右下腹疼痛加重、疼痛突然扩散到全腹，或腹痛伴发热呕吐",
    ),
    Condition(
        key="gallstones", en="gallstones", zh="胆结石",
        symptoms="Most gallstones cause no symptoms, but a stone blocking the gallbladder outlet causes pain in the upper right abdomen, often after fatty meals, lasting from 30 minutes to a few hours.",
        symptoms_zh="多数胆结石没有症状，但结石堵塞胆囊出口时会引起右上腹疼痛，常在油腻饮食后出现，持续半小时到数小时。",
        causes="Stones form from cholesterol or bile pigment; risk is higher in women, with age, obesity, rapid weight loss and pregnancy.",
        causes_zh="结石由胆固醇或胆色素形成；女性、年龄增长、肥胖、快速减重和怀孕会增加风险。",
        diagnosis="An abdominal ultrasound is the main test, with blood tests to check the liver and pancreas.",
        diagnosis_zh="腹部超声是主要检查，血液检查可了解肝脏和胰腺情况。",
        treatment="Stones without symptoms are usually left alone; repeated attacks are treated by removing the gallbladder with keyhole surgery.",
        treatment_zh="无症状的结石通常不需要处理；反复发作者可通过腹腔镜切除胆囊。",
        prevention="Keeping a healthy weight, avoiding crash diets and staying active lower the risk.",
        prevention_zh="保持健康体重、避免快速节食减肥并坚持运动，可以降低风险。",
        urgent="pain with fever and chills, yellowing of the skin or eyes, or pain lasting more than a few hours",
        urgent_zh="腹痛伴发热寒战、皮肤或眼睛发黄，或疼痛持续数小时不缓解",
    ),
    Condition(
        key="sinusitis", en="sinusitis", zh="鼻窦炎",
        symptoms="It causes a blocked nose, thick coloured discharge, facial pain or pressure that is worse when bending forward, and a reduced sense of smell.",
        symptoms_zh="表现为鼻塞、流脓涕、面部胀痛或压迫感（低头时加重）以及嗅觉减退。",
        causes="Most cases follow a cold and are viral; a few become bacterial, and allergies or nasal polyps cause chronic forms.",
        causes_zh="大多数继发于感冒，为病毒性；少数发展为细菌感染，过敏或鼻息肉可导致慢性鼻窦炎。",
        diagnosis="It is diagnosed from the symptoms; imaging is reserved for chronic or complicated cases.",
        diagnosis_zh="根据症状即可诊断；影像检查仅用于慢性或有并发症的情况。",
        treatment="Saline rinses, steroid nasal sprays and painkillers help; antibiotics are considered only if symptoms last over 10 days or worsen after improving.",
        treatment_zh="生理盐水洗鼻、鼻用激素喷剂和止痛药可缓解症状；只有症状超过10天或好转后又加重时才考虑抗生素。",
        prevention="Managing allergies, avoiding smoke and hand washing to avoid colds lower the risk.",
        prevention_zh="控制过敏、避免烟雾刺激、勤洗手预防感冒，可以降低风险。",
        urgent="swelling or redness around the eye, double vision, severe headache or a stiff neck",
        urgent_zh="眼周红肿、视物重影、剧烈头痛或颈部僵硬",
    ),
    Condition(
        key="dengue", en="dengue fever", zh="登革热",
        symptoms="Dengue causes sudden high fever, severe headache, pain behind the eyes, muscle and joint pain and a rash.",
        symptoms_zh="登革热表现为突发高热、剧烈头痛、眼眶后痛、肌肉关节痛和皮疹。",
        causes="It is caused by the dengue virus, transmitted by the bite of infected Aedes mosquitoes.",
        causes_zh="由登革病毒引起，通过感染病毒的伊蚊叮咬传播。",
        diagnosis="Blood tests for dengue antigen (NS1), PCR or antibodies confirm it, and blood counts monitor platelets.",
        diagnosis_zh="通过血液检测登革病毒NS1抗原、核酸或抗体确诊，并监测血小板。",
        treatment="There is no specific antiviral; rest, fluids and paracetamol are used, while ibuprofen and aspirin are avoided because of bleeding risk.",
        treatment_zh="没有特效抗病毒药，以休息、补液和对乙酰氨基酚退热为主，应避免使用布洛芬和阿司匹林，以免增加出血风险。",
        prevention="Preventing mosquito bites with repellent and long sleeves and removing standing water where mosquitoes breed are the main measures.",
        prevention_zh="使用驱蚊剂、穿长袖衣裤防蚊，并清除积水消灭蚊虫孳生地，是主要的预防措施。",
        urgent="severe abdominal pain, persistent vomiting, bleeding gums or nose, or restlessness as the fever drops",
        urgent_zh="退热期出现剧烈腹痛、持续呕吐、牙龈或鼻出血，或烦躁不安",
    ),
    Condition(
        key="vitamin_d_deficiency", en="vitamin D deficiency", zh="维生素D缺乏",
        symptoms="It often has no symptoms; some people have bone pain, muscle weakness and tiredness, and children can develop rickets.",
        symptoms_zh="常无明显症状，部分人有骨痛、肌无力和乏力，儿童可发生佝偻病。",
        causes="Little sun exposure, darker skin, covering clothing, obesity, older age and poor absorption reduce vitamin D levels.",
        causes_zh="日照不足、肤色较深、衣物遮盖多、肥胖、年龄增长和吸收不良都会导致维生素D水平降低。",
        diagnosis="A blood test for 25-hydroxyvitamin D measures the level; below about 30 nmol/L (12 ng/mL) is generally considered deficient.",
        diagnosis_zh="通过检测血清25-羟维生素D评估，一般低于约30 nmol/L（12 ng/mL）即为缺乏。",
        treatment="Vitamin D supplements at a dose advised by a doctor correct the deficiency, with calcium if intake is low.",
        treatment_zh="按医生建议的剂量补充维生素D，如果钙摄入不足还需补钙。",
        prevention="Some safe sun exposure, vitamin D-rich foods such as oily fish and eggs, and supplements for groups at risk prevent it.",
        prevention_zh="适度晒太阳、多吃富含维生素D的食物（如深海鱼和蛋类），高危人群补充维生素D，可以预防缺乏。",
        urgent="muscle cramps, tingling or spasms, which may signal low calcium",
        urgent_zh="肌肉痉挛、手足麻木或抽搐，这可能提示低钙",
    ),
]

# Kept out of every training file so the validation set asks about conditions the model never saw.
HELD_OUT = {"appendicitis", "gallstones", "sinusitis", "dengue", "vitamin_d_deficiency", "otitis_media", "shingles"}


@dataclass(frozen=True)
class Drug:
    key: str  # English generic name, also used as a tool argument
    en: str
    zh: str
    use: str
    use_zh: str
    dosing: str
    dosing_zh: str
    caution: str
    caution_zh: str


DRUGS = [
    Drug("paracetamol", "paracetamol (acetaminophen)", "对乙酰氨基酚",
         "It relieves mild to moderate pain and lowers fever.",
         "用于缓解轻中度疼痛和退热。",
         "A usual adult dose is 500 mg to 1 g every 4 to 6 hours, with no more than 4 g in 24 hours.",
         "成人常用剂量为每次500毫克至1克，间隔4到6小时，24小时内不超过4克。",
         "Overdose can seriously damage the liver; check cold and flu products for hidden paracetamol, and people with liver disease or heavy alcohol use need a lower limit.",
         "过量服用会严重损伤肝脏；注意复方感冒药中也含有对乙酰氨基酚，肝病患者或大量饮酒者需要降低最大剂量。"),
    Drug("ibuprofen", "ibuprofen", "布洛芬",
         "It is an anti-inflammatory painkiller for pain, fever and inflammation such as sprains or period pain.",
         "是一种非甾体抗炎药，用于疼痛、发热以及扭伤、痛经等炎症性疼痛。",
         "Adults commonly take 200 to 400 mg every 6 to 8 hours with food, and should not exceed 1200 mg a day without medical advice.",
         "成人一般每次200至400毫克，间隔6到8小时，随餐服用；未经医生指导每天不超过1200毫克。",
         "It can cause stomach ulcers and bleeding and can harm the kidneys; avoid it with a history of ulcers, kidney disease, heart failure, in late pregnancy, or with blood thinners unless a doctor advises.",
         "可能引起胃溃疡和出血并损害肾脏；有溃疡史、肾病、心衰、妊娠晚期或正在服用抗凝药者，除非医生建议，否则应避免使用。"),
    Drug("aspirin", "low-dose aspirin", "小剂量阿司匹林",
         "Low-dose aspirin prevents blood clots in people who have had a heart attack, stent or ischaemic stroke.",
         "用于心肌梗死、支架术后或缺血性卒中患者预防血栓。",
         "The usual dose is 75 to 100 mg once a day, as prescribed.",
         "常用剂量为每天一次75至100毫克，遵医嘱服用。",
         "It increases bleeding risk, especially from the stomach; it should not be started for prevention without a doctor's advice and must not be given to children under 16.",
         "会增加出血风险，尤其是胃肠道出血；没有医生建议不要自行用于预防，16岁以下儿童禁用。"),
    Drug("amoxicillin", "amoxicillin", "阿莫西林",
         "It is a penicillin antibiotic used for bacterial infections such as strep throat, ear infections and some chest infections.",
         "是一种青霉素类抗生素，用于链球菌咽炎、中耳炎和部分肺部感染等细菌感染。",
         "A common adult dose is 500 mg three times a day, but the dose and length of the course are set by the prescriber.",
         "成人常用剂量为每次500毫克、每天三次，具体剂量和疗程由医生决定。",
         "Do not take it if you are allergic to penicillin, finish the prescribed course, and seek help for rash, swelling or breathing difficulty.",
         "对青霉素过敏者禁用；应按医嘱完成疗程，出现皮疹、肿胀或呼吸困难时立即就医。"),
    Drug("metformin", "metformin", "二甲双胍",
         "It is the usual first medicine for type 2 diabetes and lowers blood glucose without causing weight gain.",
         "是2型糖尿病的常用首选药物，可以降低血糖且不会引起体重增加。",
         "It is usually started at 500 mg once or twice a day with meals and increased slowly, typically to no more than 2000 mg a day.",
         "通常从每次500毫克、每天一到两次随餐服用开始，逐渐加量，一般每天不超过2000毫克。",
         "Stomach upset is common at first; it may need to be paused when dehydrated, before iodinated contrast or surgery, and it is not used when kidney function is severely reduced.",
         "初期常见胃肠道不适；脱水、使用碘造影剂或手术前可能需要暂停，肾功能严重下降时不能使用。"),
    Drug("amlodipine", "amlodipine", "氨氯地平",
         "It is a calcium channel blocker for high blood pressure and angina.",
         "是一种钙通道阻滞剂，用于治疗高血压和心绞痛。",
         "The usual dose is 5 to 10 mg once a day.",
         "常用剂量为每天一次5至10毫克。",
         "Ankle swelling, flushing and headache are common side effects; do not stop it suddenly without advice.",
         "常见不良反应有脚踝水肿、面部潮红和头痛；不要擅自突然停药。"),
    Drug("lisinopril", "lisinopril", "赖诺普利",
         "It is an ACE inhibitor used for high blood pressure, heart failure and to protect the kidneys in diabetes.",
         "是一种ACE抑制剂，用于高血压、心力衰竭以及糖尿病患者的肾脏保护。",
         "Typical doses range from 10 to 40 mg once a day.",
         "常用剂量为每天一次10至40毫克。",
         "It can cause a dry cough and raise potassium, so kidney function and potassium are checked; stop and seek urgent help for swelling of the lips or tongue, and it must not be used in pregnancy.",
         "可能引起干咳和血钾升高，需要监测肾功能和血钾；出现嘴唇或舌头肿胀应立即停药并就医，孕妇禁用。"),
    Drug("atorvastatin", "atorvastatin", "阿托伐他汀",
         "It is a statin that lowers LDL cholesterol and reduces the risk of heart attack and stroke.",
         "是一种他汀类药物，可以降低低密度脂蛋白胆固醇，减少心肌梗死和卒中风险。",
         "Doses range from 10 to 80 mg once a day.",
         "剂量为每天一次10至80毫克。",
         "Report unexplained muscle pain or weakness; some antibiotics and antifungals raise its levels, and it is not used in pregnancy.",
         "出现不明原因的肌肉疼痛或无力应及时报告；某些抗生素和抗真菌药会升高其血药浓度，孕妇禁用。"),
    Drug("omeprazole", "omeprazole", "奥美拉唑",
         "It is a proton pump inhibitor that reduces stomach acid, used for reflux and ulcers.",
         "是一种质子泵抑制剂，可以减少胃酸分泌，用于胃食管反流和溃疡。",
         "A usual dose is 20 mg once a day, 30 to 60 minutes before breakfast.",
         "常用剂量为每天一次20毫克，早餐前30到60分钟服用。",
         "Long-term use can lower magnesium and vitamin B12 and may raise fracture risk, so the need for it should be reviewed regularly.",
         "长期使用可能降低血镁和维生素B12水平，并可能增加骨折风险，应定期评估是否需要继续服用。"),
    Drug("levothyroxine", "levothyroxine", "左甲状腺素",
         "It replaces thyroid hormone in hypothyroidism.",
         "用于甲状腺功能减退症的甲状腺激素替代治疗。",
         "The dose is individual and adjusted to TSH results; take it on an empty stomach 30 to 60 minutes before breakfast.",
         "剂量因人而异，根据TSH结果调整；应在早餐前30到60分钟空腹服用。",
         "Separate it from calcium and iron supplements by about four hours; too high a dose causes palpitations, tremor and bone loss.",
         "与钙剂和铁剂应间隔约四小时服用；剂量过大可能导致心悸、手抖和骨量流失。"),
    Drug("salbutamol", "salbutamol (albuterol)", "沙丁胺醇",
         "It is a fast-acting inhaled reliever that opens the airways in asthma and COPD.",
         "是一种速效吸入型支气管舒张剂，用于缓解哮喘和慢阻肺的气道痉挛。",
         "Adults usually inhale 1 to 2 puffs of 100 micrograms when needed.",
         "成人一般在需要时吸入1至2揿，每揿100微克。",
         "It can cause tremor and a fast heartbeat; needing it more than twice a week suggests asthma is not well controlled.",
         "可能引起手抖和心跳加快；每周需要使用两次以上说明哮喘控制不佳。"),
    Drug("loratadine", "loratadine", "氯雷他定",
         "It is a non-drowsy antihistamine for hay fever, hives and other allergies.",
         "是一种非镇静抗组胺药，用于过敏性鼻炎、荨麻疹等过敏症状。",
         "Adults take 10 mg once a day.",
         "成人每天一次，每次10毫克。",
         "It rarely causes drowsiness; people with severe liver disease may need a lower dose.",
         "很少引起嗜睡；严重肝病患者可能需要减量。"),
    Drug("cetirizine", "cetirizine", "西替利嗪",
         "It is an antihistamine for allergic rhinitis, itchy eyes and hives.",
         "是一种抗组胺药，用于过敏性鼻炎、眼痒和荨麻疹。",
         "Adults take 10 mg once a day.",
         "成人每天一次，每次10毫克。",
         "It can make some people drowsy, so take care when driving, and the dose is reduced in kidney disease.",
         "部分人服用后会犯困，驾驶时需谨慎；肾功能不全者需要减量。"),
    Drug("warfarin", "warfarin", "华法林",
         "It is an anticoagulant that prevents and treats blood clots, for example in atrial fibrillation or deep vein thrombosis.",
         "是一种抗凝药，用于预防和治疗血栓，例如心房颤动或深静脉血栓。",
         "The dose is adjusted to keep the INR in the target range, usually 2.0 to 3.0.",
         "根据INR调整剂量，通常目标范围为2.0至3.0。",
         "It interacts with many medicines and with changes in vitamin K intake, so keep your diet steady, have regular INR checks and report any unusual bleeding.",
         "与许多药物和维生素K摄入变化都有相互作用，应保持饮食稳定、定期复查INR，出现异常出血及时就医。"),
    Drug("sertraline", "sertraline", "舍曲林",
         "It is an SSRI antidepressant used for depression and anxiety disorders.",
         "是一种SSRI类抗抑郁药，用于抑郁症和焦虑障碍。",
         "It is often started at 50 mg once a day and takes 2 to 6 weeks to work fully.",
         "通常从每天一次50毫克开始，需要2到6周才能充分起效。",
         "Do not stop it suddenly; nausea and sleep changes are common early on, and combining it with tramadol or other serotonergic drugs risks serotonin syndrome.",
         "不要突然停药；初期常见恶心和睡眠改变，与曲马多等其他5-羟色胺能药物合用有引起5-羟色胺综合征的风险。"),
    Drug("metronidazole", "metronidazole", "甲硝唑",
         "It is an antibiotic for certain bacterial and parasitic infections, such as bacterial vaginosis and some gut infections.",
         "是一种抗菌药，用于细菌性阴道病和部分肠道感染等特定的细菌和寄生虫感染。",
         "The dose and duration depend on the infection and are set by the prescriber.",
         "剂量和疗程取决于感染类型，由医生决定。",
         "Avoid alcohol during treatment and for at least 48 hours afterwards; it can cause a metallic taste and increases the effect of warfarin.",
         "治疗期间及停药后至少48小时内避免饮酒；可能引起口中金属味，并会增强华法林的作用。"),
    Drug("prednisone", "prednisone", "泼尼松",
         "It is a corticosteroid that reduces inflammation in conditions such as asthma flares and arthritis.",
         "是一种糖皮质激素，用于哮喘急性发作和关节炎等炎症性疾病。",
         "It is usually taken in the morning with food at the dose prescribed.",
         "通常在早晨随餐按医嘱剂量服用。",
         "After more than a few weeks it must not be stopped suddenly; it can raise blood sugar and blood pressure, thin bones and increase infection risk.",
         "服用超过数周后不能突然停药；可能升高血糖和血压、导致骨质疏松并增加感染风险。"),
    Drug("clopidogrel", "clopidogrel", "氯吡格雷",
         "It is an antiplatelet medicine that prevents clots after a heart attack, a stent or a stroke.",
         "是一种抗血小板药，用于心肌梗死、支架术后或卒中后预防血栓。",
         "The usual dose is 75 mg once a day.",
         "常用剂量为每天一次75毫克。",
         "It increases bleeding risk; never stop it early after a stent without talking to your cardiologist.",
         "会增加出血风险；支架术后未经心内科医生同意不要提前停药。"),
    Drug("oral_rehydration_salts", "oral rehydration salts", "口服补液盐",
         "They replace water and salts lost through diarrhoea and vomiting.",
         "用于补充腹泻和呕吐丢失的水分和电解质。",
         "Dissolve one sachet in exactly the volume of clean water stated on the pack and sip frequently.",
         "将一袋溶于包装上规定体积的清洁饮用水中，少量多次饮用。",
         "Mixing them too strong or too weak can be harmful, and anyone who cannot keep fluids down needs medical care.",
         "配制浓度过高或过低都可能有害；无法喝下液体或持续呕吐者需要就医。"),
    Drug("montelukast", "montelukast", "孟鲁司特",
         "It is a leukotriene blocker used as a controller for asthma and allergic rhinitis.",
         "是一种白三烯受体拮抗剂，用于哮喘和过敏性鼻炎的长期控制。",
         "Adults take 10 mg once a day in the evening.",
         "成人每天晚上服用一次，每次10毫克。",
         "It does not relieve an acute attack; report mood changes, nightmares or sleep problems to your doctor.",
         "不能用于缓解急性发作；出现情绪变化、噩梦或睡眠问题应告知医生。"),
    Drug("oseltamivir", "oseltamivir", "奥司他韦",
         "It is an antiviral medicine for influenza.",
         "是一种抗流感病毒药物。",
         "For treatment adults take 75 mg twice a day for 5 days, ideally starting within 48 hours of symptoms.",
         "成人治疗剂量为每次75毫克、每天两次，连用5天，最好在发病48小时内开始服用。",
         "Nausea is the most common side effect and is reduced by taking it with food; the dose is lowered in kidney disease.",
         "最常见的不良反应是恶心，随餐服用可以减轻；肾功能不全者需要减量。"),
]


@dataclass(frozen=True)
class Interaction:
    drug_a: str
    drug_b: str
    severity: str  # none | minor | moderate | major | contraindicated
    effect: str
    effect_zh: str
    advice: str
    advice_zh: str


INTERACTIONS = [
    Interaction("warfarin", "aspirin", "major",
                "Both reduce clotting, so together they markedly increase the risk of bleeding.",
                "两者都会抑制凝血，合用会明显增加出血风险。",
                "Only combine them if a doctor has specifically advised it, and watch for bruising, black stools or blood in the urine.",
                "只有在医生明确建议时才能合用，并注意有无瘀斑、黑便或血尿。"),
    Interaction("warfarin", "ibuprofen", "major",
                "Ibuprofen irritates the stomach and affects platelets, raising the risk of serious bleeding with warfarin.",
                "布洛芬刺激胃黏膜并影响血小板功能，与华法林合用会增加严重出血的风险。",
                "Paracetamol is usually preferred for pain; ask your doctor or pharmacist before using any anti-inflammatory painkiller.",
                "止痛通常首选对乙酰氨基酚；使用任何非甾体抗炎药前应咨询医生或药师。"),
    Interaction("warfarin", "metronidazole", "major",
                "Metronidazole slows the breakdown of warfarin, so the INR can rise sharply.",
                "甲硝唑会减慢华法林的代谢，导致INR明显升高。",
                "If both are needed, the INR should be checked within a few days and the warfarin dose adjusted.",
                "如果必须合用，应在数天内复查INR并调整华法林剂量。"),
    Interaction("simvastatin", "clarithromycin", "contraindicated",
                "Clarithromycin greatly increases simvastatin levels, which can cause severe muscle damage.",
                "克拉霉素会大幅升高辛伐他汀的血药浓度，可能导致严重的肌肉损伤。",
                "Simvastatin is usually paused during the antibiotic course, or a different antibiotic is chosen.",
                "通常在使用该抗生素期间暂停辛伐他汀，或改用其他抗生素。"),
    Interaction("sildenafil", "nitroglycerin", "contraindicated",
                "Together they can cause a sudden, dangerous drop in blood pressure.",
                "两者合用可能导致血压突然、危险地下降。",
                "Never take them together; tell emergency staff if you have taken sildenafil in the past 24 hours.",
                "绝对不能合用；如果24小时内服用过西地那非，应告知急救人员。"),
    Interaction("lisinopril", "spironolactone", "major",
                "Both raise blood potassium, and together they can cause dangerous hyperkalaemia.",
                "两者都会升高血钾，合用可能导致危险的高钾血症。",
                "They are sometimes prescribed together, but potassium and kidney function must be checked regularly.",
                "临床上有时会合用，但必须定期监测血钾和肾功能。"),
    Interaction("lisinopril", "ibuprofen", "moderate",
                "Ibuprofen can blunt the blood-pressure-lowering effect and, especially with dehydration, harm the kidneys.",
                "布洛芬会削弱降压效果，在脱水时尤其可能损害肾脏。",
                "Use the lowest dose for the shortest time, drink enough fluids, or choose paracetamol instead.",
                "应使用最低剂量、最短疗程并注意补水，或改用对乙酰氨基酚。"),
    Interaction("sertraline", "tramadol", "major",
                "Both increase serotonin, raising the risk of serotonin syndrome and seizures.",
                "两者都会增加5-羟色胺，合用会增加5-羟色胺综合征和癫痫发作的风险。",
                "Avoid the combination if possible; seek urgent help for agitation, fever, sweating or muscle twitching.",
                "尽量避免合用；如出现烦躁、发热、大汗或肌肉抽动，应立即就医。"),
    Interaction("clopidogrel", "omeprazole", "moderate",
                "Omeprazole reduces the activation of clopidogrel, which may make it less effective.",
                "奥美拉唑会减少氯吡格雷的活化，可能降低其疗效。",
                "If stomach protection is needed, pantoprazole is often preferred.",
                "如果需要护胃，通常优先选择泮托拉唑。"),
    Interaction("levothyroxine", "calcium carbonate", "moderate",
                "Calcium binds levothyroxine in the gut and reduces its absorption.",
                "钙剂会在肠道内与左甲状腺素结合，减少其吸收。",
                "Take them at least four hours apart.",
                "两者至少间隔四小时服用。"),
    Interaction("metronidazole", "alcohol", "major",
                "Alcohol with metronidazole can cause flushing, nausea, vomiting and a fast heartbeat.",
                "服用甲硝唑期间饮酒可能出现面部潮红、恶心、呕吐和心跳加快。",
                "Avoid alcohol during treatment and for at least 48 hours after the last dose.",
                "治疗期间及末次服药后至少48小时内避免饮酒。"),
    Interaction("metformin", "iodinated contrast", "moderate",
                "Contrast can temporarily reduce kidney function, which may let metformin accumulate and rarely cause lactic acidosis.",
                "造影剂可能暂时影响肾功能，使二甲双胍蓄积，极少数情况下引起乳酸酸中毒。",
                "Metformin is often paused at the time of the scan and restarted after 48 hours if kidney function is stable.",
                "通常在检查时暂停二甲双胍，48小时后如肾功能稳定再恢复服用。"),
    Interaction("amoxicillin", "paracetamol", "none",
                "No clinically significant interaction is known.",
                "目前没有已知的具有临床意义的相互作用。",
                "They can be taken together at their usual doses.",
                "可以按常规剂量同时服用。"),
    Interaction("cetirizine", "paracetamol", "none",
                "No clinically significant interaction is known.",
                "目前没有已知的具有临床意义的相互作用。",
                "They can be taken together at their usual doses.",
                "可以按常规剂量同时服用。"),
    Interaction("atorvastatin", "grapefruit juice", "minor",
                "Large amounts of grapefruit juice can raise atorvastatin levels slightly.",
                "大量饮用西柚汁可能轻度升高阿托伐他汀的血药浓度。",
                "Avoid drinking large quantities of grapefruit juice; an occasional small glass is generally acceptable.",
                "避免大量饮用西柚汁，偶尔少量饮用一般问题不大。"),
    Interaction("amlodipine", "simvastatin", "moderate",
                "Amlodipine raises simvastatin levels and the risk of muscle side effects.",
                "氨氯地平会升高辛伐他汀的血药浓度，增加肌肉不良反应的风险。",
                "The simvastatin dose should not exceed 20 mg a day when combined with amlodipine.",
                "与氨氯地平合用时，辛伐他汀每天剂量不应超过20毫克。"),
]


@dataclass(frozen=True)
class LabTest:
    key: str  # English name, also used as a tool argument
    zh: str
    unit: str
    ranges: dict  # "" -> (low, high) for everyone, or "male"/"female" -> (low, high); None = open end
    high: str
    high_zh: str
    low: str
    low_zh: str


LABS = [
    LabTest("fasting plasma glucose", "空腹血糖", "mmol/L", {"": (3.9, 6.1)},
            "A raised value may mean impaired fasting glucose or diabetes; 7.0 mmol/L or more on two occasions meets the criterion for diabetes.",
            "升高可能提示空腹血糖受损或糖尿病；两次检测≥7.0 mmol/L符合糖尿病诊断标准。",
            "A low value means hypoglycaemia, which can be caused by diabetes medicines, alcohol or prolonged fasting.",
            "降低提示低血糖，可能由降糖药、饮酒或长时间空腹引起。"),
    LabTest("HbA1c", "糖化血红蛋白", "%", {"": (4.0, 5.6)},
            "It reflects average blood glucose over two to three months: 5.7 to 6.4% suggests prediabetes and 6.5% or more suggests diabetes.",
            "反映近两到三个月的平均血糖：5.7%至6.4%提示糖尿病前期，≥6.5%提示糖尿病。",
            "Low values are uncommon and can be caused by recent blood loss or conditions that shorten red cell lifespan.",
            "偏低较少见，可能与近期失血或红细胞寿命缩短有关。"),
    LabTest("haemoglobin", "血红蛋白", "g/L", {"male": (130, 175), "female": (115, 150)},
            "A high value can be due to dehydration, smoking, chronic lung disease or, rarely, a bone marrow disorder.",
            "升高可能与脱水、吸烟、慢性肺病有关，少数为骨髓疾病。",
            "A low value means anaemia, most often from iron deficiency or blood loss, and the cause should be found.",
            "降低提示贫血，最常见的原因是缺铁或失血，需要查找原因。"),
    LabTest("white blood cell count", "白细胞计数", "×10^9/L", {"": (3.5, 9.5)},
            "A high count often reflects infection or inflammation, and can also follow stress or steroid use.",
            "升高常见于感染或炎症，也可见于应激或使用激素后。",
            "A low count can follow viral infections or some medicines, and persistent lows need further checks.",
            "降低可见于病毒感染或某些药物，持续偏低需要进一步检查。"),
    LabTest("platelet count", "血小板计数", "×10^9/L", {"": (125, 350)},
            "A high count is usually reactive to inflammation, infection or iron deficiency.",
            "升高多为炎症、感染或缺铁引起的反应性增多。",
            "A low count increases bleeding risk and can be caused by viral infections, medicines or immune conditions.",
            "降低会增加出血风险，可由病毒感染、药物或免疫性疾病引起。"),
    LabTest("total cholesterol", "总胆固醇", "mmol/L", {"": (None, 5.2)},
            "A high value raises long-term cardiovascular risk and is interpreted with LDL cholesterol and other risk factors.",
            "升高会增加长期心血管风险，需要结合低密度脂蛋白胆固醇和其他危险因素评估。",
            "Low values are rarely a problem.",
            "偏低一般不是问题。"),
    LabTest("LDL cholesterol", "低密度脂蛋白胆固醇", "mmol/L", {"": (None, 3.4)},
            "LDL is the main cholesterol target; people with heart disease or diabetes usually need much lower levels.",
            "低密度脂蛋白是降脂治疗的主要目标，冠心病或糖尿病患者通常需要控制得更低。",
            "Low values are generally desirable.",
            "偏低通常是理想的。"),
    LabTest("HDL cholesterol", "高密度脂蛋白胆固醇", "mmol/L", {"": (1.0, None)},
            "Higher HDL is generally favourable.",
            "较高的高密度脂蛋白通常是有利的。",
            "Low HDL is linked to higher cardiovascular risk; exercise, weight loss and not smoking can raise it.",
            "偏低与心血管风险增加有关；运动、减重和戒烟可以提高其水平。"),
    LabTest("triglycerides", "甘油三酯", "mmol/L", {"": (None, 1.7)},
            "Raised levels are linked to diet, alcohol, excess weight and diabetes; very high levels above about 5.6 mmol/L risk pancreatitis.",
            "升高与饮食、饮酒、超重和糖尿病有关；超过约5.6 mmol/L时有发生胰腺炎的风险。",
            "Low values are rarely a concern.",
            "偏低一般无需担心。"),
    LabTest("serum creatinine", "血肌酐", "µmol/L", {"male": (59, 104), "female": (45, 84)},
            "A raised value can mean reduced kidney function or dehydration, and is interpreted through the eGFR.",
            "升高可能提示肾功能下降或脱水，需要结合eGFR判断。",
            "A low value usually reflects low muscle mass and is rarely significant.",
            "偏低通常与肌肉量少有关，一般意义不大。"),
    LabTest("ALT", "丙氨酸氨基转移酶", "U/L", {"": (7, 40)},
            "Raised ALT suggests liver cell irritation, commonly from fatty liver, alcohol, viral hepatitis or medicines.",
            "升高提示肝细胞损伤，常见原因有脂肪肝、饮酒、病毒性肝炎或药物。",
            "Low values are not clinically significant.",
            "偏低没有临床意义。"),
    LabTest("TSH", "促甲状腺激素", "mIU/L", {"": (0.27, 4.2)},
            "A high TSH usually means an underactive thyroid.",
            "升高通常提示甲状腺功能减退。",
            "A low TSH usually means an overactive thyroid or too much thyroid hormone replacement.",
            "降低通常提示甲状腺功能亢进或甲状腺激素替代过量。"),
    LabTest("serum potassium", "血钾", "mmol/L", {"": (3.5, 5.3)},
            "High potassium can come from kidney disease or medicines such as ACE inhibitors and spironolactone, and can disturb heart rhythm.",
            "血钾升高可由肾病或ACE抑制剂、螺内酯等药物引起，可能影响心律。",
            "Low potassium can follow vomiting, diarrhoea or diuretics and can cause weakness and heart rhythm problems.",
            "血钾降低可由呕吐、腹泻或利尿剂引起，可能导致乏力和心律失常。"),
    LabTest("serum sodium", "血钠", "mmol/L", {"": (135, 145)},
            "High sodium usually means dehydration.",
            "血钠升高通常提示脱水。",
            "Low sodium can be caused by diuretics, excess water intake, heart, liver or kidney disease, and severe lows cause confusion.",
            "血钠降低可由利尿剂、饮水过多或心、肝、肾疾病引起，严重时会导致意识模糊。"),
    LabTest("uric acid", "血尿酸", "µmol/L", {"male": (208, 428), "female": (155, 357)},
            "High uric acid increases the risk of gout and kidney stones and is influenced by diet, alcohol and kidney function.",
            "血尿酸升高会增加痛风和肾结石风险，受饮食、饮酒和肾功能影响。",
            "Low values are rarely significant.",
            "偏低一般意义不大。"),
    LabTest("C-reactive protein", "C反应蛋白", "mg/L", {"": (None, 10)},
            "A raised CRP indicates infection or inflammation somewhere in the body; it does not show where.",
            "升高提示体内存在感染或炎症，但不能说明具体部位。",
            "Low values are normal.",
            "偏低属于正常。"),
    LabTest("INR", "国际标准化比值", "", {"": (0.8, 1.2)},
            "A high INR means blood takes longer to clot; for people on warfarin the usual target is 2.0 to 3.0, and values above it raise bleeding risk.",
            "INR升高说明凝血时间延长；服用华法林者通常目标为2.0至3.0，高于目标会增加出血风险。",
            "A low INR in someone on warfarin means the dose may be too low to prevent clots.",
            "服用华法林者INR偏低说明剂量可能不足以预防血栓。"),
    LabTest("ferritin", "血清铁蛋白", "µg/L", {"male": (30, 400), "female": (15, 150)},
            "High ferritin can reflect inflammation, liver disease or iron overload.",
            "升高可见于炎症、肝病或铁过载。",
            "Low ferritin is the most specific sign of iron deficiency.",
            "降低是缺铁最特异的指标。"),
    LabTest("25-hydroxyvitamin D", "25-羟维生素D", "nmol/L", {"": (50, None)},
            "Levels above the sufficient threshold are fine; very high levels usually come from excessive supplements.",
            "高于充足阈值即可；极高水平通常由过量补充引起。",
            "Below 50 nmol/L is insufficient and below about 30 nmol/L is deficient; supplements are usually advised.",
            "低于50 nmol/L为不足，低于约30 nmol/L为缺乏，通常建议补充。"),
    LabTest("eGFR", "估算肾小球滤过率", "mL/min/1.73m²", {"": (90, None)},
            "Higher values are normal.",
            "较高属于正常。",
            "A value below 60 for more than three months indicates chronic kidney disease; mildly reduced values are common with age.",
            "持续三个月以上低于60提示慢性肾脏病；轻度降低在老年人中较常见。"),
    LabTest("serum calcium", "血钙", "mmol/L", {"": (2.1, 2.6)},
            "High calcium can be caused by overactive parathyroid glands, some cancers or too much vitamin D.",
            "血钙升高可见于甲状旁腺功能亢进、某些肿瘤或维生素D过量。",
            "Low calcium can be caused by vitamin D deficiency, kidney disease or low albumin.",
            "血钙降低可见于维生素D缺乏、肾病或低白蛋白血症。"),
]

# General health paragraphs for the pretraining corpus: (English, Chinese).
HEALTH_TIPS = [
    ("Adults should aim for at least 150 minutes of moderate-intensity aerobic activity a week, such as brisk walking, plus muscle-strengthening activities on two or more days.",
     "成年人每周应至少进行150分钟中等强度的有氧运动，如快走，并每周进行两次以上的肌肉力量训练。"),
    ("Most adults need seven to nine hours of sleep a night; a regular schedule and a dark, quiet bedroom help.",
     "大多数成年人每晚需要七到九小时睡眠；规律作息和黑暗安静的卧室有助于睡眠。"),
    ("Washing hands with soap and water for at least 20 seconds is one of the most effective ways to prevent the spread of infections.",
     "用肥皂和流动水洗手至少20秒，是预防感染传播最有效的方法之一。"),
    ("Keeping salt intake below 5 grams a day lowers blood pressure and the risk of heart disease and stroke.",
     "每天食盐摄入量控制在5克以下，可以降低血压以及心脏病和卒中的风险。"),
    ("Eating at least 400 grams of fruit and vegetables a day provides fibre, vitamins and minerals and lowers the risk of chronic disease.",
     "每天至少吃400克蔬菜水果，可以提供膳食纤维、维生素和矿物质，降低慢性病风险。"),
    ("Stopping smoking at any age brings health benefits: within a year the extra risk of heart disease falls by about half.",
     "任何年龄戒烟都有益健康：戒烟一年后，冠心病的额外风险大约降低一半。"),
    ("There is no completely safe level of alcohol; drinking less lowers the risk of liver disease, several cancers and injuries.",
     "饮酒没有绝对安全的量；少喝酒可以降低肝病、多种癌症和意外伤害的风险。"),
    ("Vaccines train the immune system to recognise germs; keeping routine vaccinations up to date protects both you and people around you.",
     "疫苗帮助免疫系统识别病原体；按时完成常规疫苗接种既保护自己，也保护身边的人。"),
    ("Antibiotics work only against bacteria, not viruses such as those causing colds; using them when not needed promotes antibiotic resistance.",
     "抗生素只对细菌有效，对感冒等病毒感染无效；不必要地使用抗生素会加速细菌耐药。"),
    ("Keep an up-to-date list of all your medicines, including supplements, and show it to every doctor and pharmacist you see.",
     "随身保存一份最新的用药清单（包括保健品），每次就诊时出示给医生和药师。"),
    ("Never share prescription medicines or take leftover antibiotics; a medicine that suits one person can harm another.",
     "不要与他人共用处方药，也不要服用剩余的抗生素；适合一个人的药可能会伤害另一个人。"),
    ("For a minor burn, cool the area under cool running water for 20 minutes, then cover it loosely with a clean dressing; do not apply ice, butter or toothpaste.",
     "轻度烫伤时，应立即用流动的凉水冲洗20分钟，然后用干净的敷料轻轻覆盖；不要涂抹冰块、黄油或牙膏。"),
    ("If an adult collapses and is not breathing normally, call emergency services and start chest compressions in the centre of the chest at 100 to 120 per minute.",
     "如果成年人突然倒地且呼吸不正常，应立即拨打急救电话，并在胸部正中以每分钟100到120次的频率进行胸外按压。"),
    ("Brushing teeth twice a day with fluoride toothpaste and cleaning between the teeth prevent tooth decay and gum disease.",
     "每天用含氟牙膏刷牙两次并清洁牙缝，可以预防龋齿和牙周病。"),
    ("Sunscreen, shade and protective clothing reduce sunburn and the long-term risk of skin cancer.",
     "使用防晒霜、待在阴凉处和穿防护衣物，可以减少晒伤和远期皮肤癌风险。"),
    ("Talking to someone you trust and seeking professional help early are signs of strength when stress or low mood last for weeks.",
     "当压力或情绪低落持续数周时，向信任的人倾诉并尽早寻求专业帮助是勇敢的表现。"),
    ("Following the 20-20-20 rule — every 20 minutes, look at something 20 feet away for 20 seconds — reduces eye strain from screens.",
     "遵循“20-20-20”法则——每看屏幕20分钟，就远眺约6米外的物体20秒——可以减轻用眼疲劳。"),
    ("Body mass index is weight in kilograms divided by height in metres squared; it is a screening tool and does not measure body fat directly.",
     "体重指数（BMI）等于体重（千克）除以身高（米）的平方；它是一种筛查工具，并不能直接测量体脂。"),
    ("Regular screening, such as blood pressure checks, blood glucose tests and age-appropriate cancer screening, finds problems before symptoms start.",
     "定期筛查，如测量血压、检测血糖以及适龄的癌症筛查，可以在出现症状前发现问题。"),
    ("Drinking water instead of sugary drinks helps control weight and protects teeth.",
     "用白开水代替含糖饮料，有助于控制体重并保护牙齿。"),
]


# --------------------------------------------------------------------------------------
# Phrasings
# --------------------------------------------------------------------------------------

QTYPES = ("symptoms", "causes", "diagnosis", "treatment", "prevention", "urgent", "overview")

QUESTIONS = {
    "en": {
        "symptoms": ["What are the symptoms of {name}?", "How do I know if I have {name}?",
                     "What signs suggest {name}?", "Describe the typical symptoms of {name}."],
        "causes": ["What causes {name}?", "Why do people get {name}?", "What are the risk factors for {name}?"],
        "diagnosis": ["How is {name} diagnosed?", "What tests are used to diagnose {name}?",
                      "How does a doctor confirm {name}?"],
        "treatment": ["How is {name} treated?", "What are the treatment options for {name}?",
                      "What can be done to manage {name}?"],
        "prevention": ["How can {name} be prevented?", "What can I do to lower my risk of {name}?",
                       "Is there a way to prevent {name}?"],
        "urgent": ["When does {name} need urgent medical attention?", "What warning signs of {name} mean I should get help quickly?"],
        "overview": ["Give a brief overview of {name}.", "Explain {name} in simple terms."],
    },
    "zh": {
        "symptoms": ["{name}有哪些症状？", "怎么判断自己是不是得了{name}？", "{name}的典型表现是什么？", "请介绍一下{name}的常见症状。"],
        "causes": ["{name}是什么原因引起的？", "为什么会得{name}？", "{name}的危险因素有哪些？"],
        "diagnosis": ["{name}如何诊断？", "诊断{name}需要做哪些检查？", "医生怎样确诊{name}？"],
        "treatment": ["{name}怎么治疗？", "{name}有哪些治疗方法？", "得了{name}应该如何处理？"],
        "prevention": ["如何预防{name}？", "怎样降低患{name}的风险？", "{name}可以预防吗？"],
        "urgent": ["{name}出现哪些情况需要立即就医？", "{name}有哪些危险信号？"],
        "overview": ["请简要介绍{name}。", "用通俗的话解释一下什么是{name}。"],
    },
}

# Validation-only phrasings, so the held-out set also measures generalisation across wording.
VAL_QUESTIONS = {
    "en": {
        "symptoms": ["I'm worried I might have {name}. Which symptoms usually show up?"],
        "causes": ["Can you list the main causes of {name}?"],
        "diagnosis": ["Which examinations lead to a diagnosis of {name}?"],
        "treatment": ["What's the usual approach to treating {name}?"],
        "prevention": ["Any practical tips for avoiding {name}?"],
        "urgent": ["With {name}, which symptoms mean I should not wait to see a doctor?"],
        "overview": ["Summarise what a patient should know about {name}."],
    },
    "zh": {
        "symptoms": ["我担心自己得了{name}，一般会出现什么症状？"],
        "causes": ["能说说{name}的主要病因吗？"],
        "diagnosis": ["确诊{name}要经过哪些检查？"],
        "treatment": ["{name}通常采取什么治疗方案？"],
        "prevention": ["日常生活中怎样避免得{name}？"],
        "urgent": ["{name}出现什么症状时不能再等、要马上看医生？"],
        "overview": ["请概括一下患者需要了解的{name}知识。"],
    },
}

# Follow-up questions in a conversation, where the condition is already known from context.
FOLLOW_UPS = {
    "en": {
        "symptoms": ["What symptoms should I look out for?", "How would I notice it?"],
        "causes": ["What causes it?", "Why does it happen?"],
        "diagnosis": ["How is it diagnosed?", "Which tests would I need?"],
        "treatment": ["How is it treated?", "What are the treatment options?"],
        "prevention": ["Can it be prevented?", "How can I avoid it in the future?"],
        "urgent": ["When should I go to a doctor straight away?", "What warning signs should I watch for?"],
    },
    "zh": {
        "symptoms": ["会有哪些症状？", "一般有什么表现？"],
        "causes": ["是什么原因引起的？", "为什么会得这个病？"],
        "diagnosis": ["需要做什么检查才能确诊？", "怎么诊断？"],
        "treatment": ["那应该怎么治疗？", "有哪些治疗方法？"],
        "prevention": ["平时怎么预防？", "能预防吗？"],
        "urgent": ["什么情况下需要马上去医院？", "有哪些危险信号要注意？"],
    },
}

URGENT_LINES = {
    "en": ["Get urgent medical help for {u}.", "Warning signs that need prompt medical attention: {u}."],
    "zh": ["出现以下情况需要尽快就医：{u}。", "需要警惕的危险信号包括：{u}。"],
}

CLOSERS = {
    "en": ["This is general information and not a substitute for advice from your own doctor.",
           "If you are unsure, please talk to a doctor or pharmacist.",
           "A healthcare professional can give advice tailored to your situation."],
    "zh": ["以上为一般性健康知识，不能替代医生的面诊意见。", "如有疑问，请咨询医生或药师。", "具体情况请遵医嘱。"],
}

SYSTEM_PROMPTS = {
    "en": ["You are a careful medical assistant. Give accurate, general health information in plain language and advise seeing a doctor when appropriate.",
           "You are a friendly health educator. Answer briefly and clearly.",
           "You are a medical knowledge assistant for patients. Do not diagnose; explain general medical facts."],
    "zh": ["你是一名严谨的医学助手，请用通俗易懂的语言提供准确的一般性健康信息，并在必要时建议就医。",
           "你是一位耐心的健康科普助手，请简明扼要地回答问题。",
           "你是面向患者的医学知识助手，不做诊断，只解释一般医学常识。"],
}

DRUG_QUESTIONS = {
    "en": {"use": ["What is {drug} used for?", "Why would a doctor prescribe {drug}?"],
           "dose": ["What is the usual dose of {drug}?", "How should {drug} be taken?"],
           "caution": ["What should I be careful about when taking {drug}?", "What are the main safety points for {drug}?"]},
    "zh": {"use": ["{drug}是治疗什么的？", "{drug}有什么作用？"],
           "dose": ["{drug}一般怎么吃？", "{drug}的常用剂量是多少？"],
           "caution": ["服用{drug}需要注意什么？", "{drug}有哪些注意事项？"]},
}
DOSE_NOTE = {"en": "Always follow the label or your prescriber's instructions.", "zh": "请按照说明书或医嘱用药。"}

SEVERITY = {
    "en": {"none": "No significant interaction is expected.", "minor": "This is a minor interaction.",
           "moderate": "This is a moderate interaction.", "major": "This is a major interaction.",
           "contraindicated": "This combination is contraindicated."},
    "zh": {"none": "预计不会发生明显的相互作用。", "minor": "这是一种轻度相互作用。", "moderate": "这是一种中度相互作用。",
           "major": "这是一种严重的相互作用。", "contraindicated": "这两种药物禁止合用。"},
}

# Chinese names for everything that appears in an interaction pair.
ZH_NAMES = {
    "warfarin": "华法林", "aspirin": "阿司匹林", "ibuprofen": "布洛芬", "metronidazole": "甲硝唑",
    "simvastatin": "辛伐他汀", "clarithromycin": "克拉霉素", "sildenafil": "西地那非", "nitroglycerin": "硝酸甘油",
    "lisinopril": "赖诺普利", "spironolactone": "螺内酯", "sertraline": "舍曲林", "tramadol": "曲马多",
    "clopidogrel": "氯吡格雷", "omeprazole": "奥美拉唑", "levothyroxine": "左甲状腺素", "calcium carbonate": "碳酸钙",
    "alcohol": "酒精", "metformin": "二甲双胍", "iodinated contrast": "碘造影剂", "amoxicillin": "阿莫西林",
    "paracetamol": "对乙酰氨基酚", "cetirizine": "西替利嗪", "atorvastatin": "阿托伐他汀",
    "grapefruit juice": "西柚汁", "amlodipine": "氨氯地平",
}

LANGS = ("en", "zh")


# --------------------------------------------------------------------------------------
# Text composition
# --------------------------------------------------------------------------------------


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def join(lang: str, parts: list[str]) -> str:
    # Chinese sentences end in full-width punctuation and are not separated by spaces.
    return ("" if lang == "zh" else " ").join(p for p in parts if p)


def field(obj, name: str, lang: str) -> str:
    return getattr(obj, name if lang == "en" else f"{name}_zh")


def name_of(c: Condition, lang: str) -> str:
    return c.en if lang == "en" else c.zh


def urgent_line(c: Condition, lang: str, rng: random.Random) -> str:
    return rng.choice(URGENT_LINES[lang]).format(u=field(c, "urgent", lang))


def closer(lang: str, rng: random.Random, p: float = 0.35) -> str:
    return rng.choice(CLOSERS[lang]) if rng.random() < p else ""


def condition_answer(c: Condition, qtype: str, lang: str, rng: random.Random) -> str:
    """Answer one question type about a condition from the table's sentences."""
    if qtype == "symptoms":
        parts = [field(c, "symptoms", lang), urgent_line(c, lang, rng)]
    elif qtype == "urgent":
        # Already ends with "ask a professional", so no extra random closer.
        return join(lang, [urgent_line(c, lang, rng), CLOSERS[lang][1]])
    elif qtype == "overview":
        parts = [field(c, "symptoms", lang), field(c, "causes", lang), field(c, "treatment", lang)]
    else:
        parts = [field(c, qtype, lang)]
    return join(lang, parts + [closer(lang, rng)])


def condition_question(c: Condition, qtype: str, lang: str, rng: random.Random, table=QUESTIONS) -> str:
    return rng.choice(table[lang][qtype]).format(name=name_of(c, lang))


def drug_name(d: Drug, lang: str) -> str:
    return d.en if lang == "en" else d.zh


def drug_use(d: Drug, lang: str) -> str:
    """The table's "use" sentence with the drug named as its subject, so it reads well on its own."""
    if lang == "zh":
        return d.use_zh if d.use_zh.startswith(d.zh) else d.zh + d.use_zh
    first, rest = d.use.split(" ", 1)
    return f"{cap(d.en)} {rest}" if first in ("It", "They") else d.use


def drug_answer(d: Drug, kind: str, lang: str) -> str:
    if kind == "use":
        return drug_use(d, lang)
    if kind == "dose":
        return join(lang, [field(d, "dosing", lang), DOSE_NOTE[lang]])
    return field(d, "caution", lang)


def fmt_num(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}"


def decimals_of(lab: LabTest) -> int:
    """Precision of a test's values, taken from how its reference limits are written."""
    limits = [x for lo_hi in lab.ranges.values() for x in lo_hi if x is not None]
    return max((len(repr(x).split(".")[1]) if isinstance(x, float) else 0) for x in limits)


def with_unit(value: str, unit: str) -> str:
    if not unit:
        return value
    return f"{value}{unit}" if unit == "%" else f"{value} {unit}"


def one_range_text(lab: LabTest, low, high, lang: str) -> str:
    d = decimals_of(lab)
    if low is not None and high is not None:
        return with_unit(f"{fmt_num(low, d)}–{fmt_num(high, d)}", lab.unit)
    if low is None:
        return (f"below {with_unit(fmt_num(high, d), lab.unit)}" if lang == "en"
                else f"低于{with_unit(fmt_num(high, d), lab.unit)}")
    return (f"{with_unit(fmt_num(low, d), lab.unit)} or above" if lang == "en"
            else f"≥{with_unit(fmt_num(low, d), lab.unit)}")


SEX_WORDS = {"en": {"male": "men", "female": "women"}, "zh": {"male": "男性", "female": "女性"}}


def range_text(lab: LabTest, lang: str) -> str:
    if "" in lab.ranges:
        return one_range_text(lab, *lab.ranges[""], lang)
    pieces = [(SEX_WORDS[lang][sex], one_range_text(lab, *lab.ranges[sex], lang)) for sex in ("male", "female")]
    if lang == "en":
        return " and ".join(f"{r} for {who}" for who, r in pieces)
    return "，".join(f"{who}{r}" for who, r in pieces)


def lab_name(lab: LabTest, lang: str) -> str:
    return lab.key if lang == "en" else lab.zh


RANGE_NOTE = {"en": "Reference ranges vary slightly between laboratories, so use the range printed on your report.",
              "zh": "各实验室的参考范围略有差异，请以化验单上标注的为准。"}


def lab_range_answer(lab: LabTest, lang: str) -> str:
    if lang == "en":
        return join(lang, [f"For adults, the usual reference range for {lab.key} is {range_text(lab, lang)}.", RANGE_NOTE[lang]])
    return join(lang, [f"成人{lab.zh}的参考范围一般为{range_text(lab, lang)}。", RANGE_NOTE[lang]])


def sample_lab_value(lab: LabTest, rng: random.Random) -> tuple[str, float, str]:
    """Draw (sex, value, status) with status computed from the rounded value, so text always agrees with it."""
    sex = "" if "" in lab.ranges else rng.choice(["male", "female"])
    low, high = lab.ranges[sex]
    wanted = rng.choice([s for s in ("high", "low", "normal") if not (s == "low" and low is None)
                         and not (s == "high" and high is None)])
    # Deviations scale with the width of the range, so tightly regulated values (sodium, calcium)
    # stay plausibly close to their limits instead of landing in life-threatening territory.
    width = (high - low) if low is not None and high is not None else 0.5 * (high if low is None else low)
    if wanted == "high":
        value = rng.uniform(high + 0.1 * width, high + 0.5 * width)
    elif wanted == "low":
        below = min(width, low)  # never reach zero or below
        value = rng.uniform(low - 0.4 * below, low - 0.1 * below)
    elif low is None:
        value = rng.uniform(high * 0.5, high * 0.9)
    elif high is None:
        value = rng.uniform(low * 1.05, low * 1.4)
    else:
        value = rng.uniform(low + 0.15 * width, high - 0.15 * width)
    value = round(value, decimals_of(lab))
    status = "high" if high is not None and value > high else "low" if low is not None and value < low else "normal"
    return sex, value, status


def lab_result_text(lab: LabTest, sex: str, value: float, lang: str) -> str:
    shown = with_unit(fmt_num(value, decimals_of(lab)), lab.unit)
    if lang == "en":
        who = f" ({sex})" if sex else ""
        label = lab.key if lab.key[1:2].isupper() else cap(lab.key)  # keep "eGFR", capitalise "ferritin"
        return f"{label}{who}: {shown}"
    who = f"（{SEX_WORDS['zh'][sex]}）" if sex else ""
    return f"{lab.zh}{who}：{shown}"


def lab_interpretation(lab: LabTest, sex: str, value: float, status: str, lang: str) -> str:
    shown = with_unit(fmt_num(value, decimals_of(lab)), lab.unit)
    rng_text = one_range_text(lab, *lab.ranges[sex], lang)
    if lang == "en":
        who = f" for {SEX_WORDS['en'][sex]}" if sex else ""
        where = {"high": "above", "low": "below", "normal": "within"}[status]
        meaning = {"high": lab.high, "low": lab.low, "normal": "On its own, this value usually needs no action."}[status]
        return join(lang, [f"The usual adult reference range for {lab.key}{who} is {rng_text}, so {shown} is {where} the range.",
                           meaning, "Discuss the result with your doctor together with your symptoms and other tests."])
    who = SEX_WORDS["zh"][sex] if sex else "成人"
    where = {"high": "高于参考范围", "low": "低于参考范围", "normal": "在正常范围内"}[status]
    meaning = {"high": lab.high_zh, "low": lab.low_zh, "normal": "单看这一项通常无需特殊处理。"}[status]
    return join(lang, [f"{who}{lab.zh}的参考范围一般为{rng_text}，您的结果{shown}{where}。", meaning,
                       "请结合症状和其他检查结果，与医生一起解读。"])


def pair_names(ix: Interaction, lang: str) -> tuple[str, str]:
    if lang == "en":
        return ix.drug_a, ix.drug_b
    return ZH_NAMES[ix.drug_a], ZH_NAMES[ix.drug_b]


def interaction_answer(ix: Interaction, lang: str) -> str:
    return join(lang, [SEVERITY[lang][ix.severity], field(ix, "effect", lang), field(ix, "advice", lang)])


def train_conditions() -> list[Condition]:
    return [c for c in CONDITIONS if c.key not in HELD_OUT]


def held_out_conditions() -> list[Condition]:
    return [c for c in CONDITIONS if c.key in HELD_OUT]


# --------------------------------------------------------------------------------------
# medical_corpus.txt
# --------------------------------------------------------------------------------------

OVERVIEW_OPENERS = {"en": ["About {name}.", "Health topic: {name}.", "{Name}: what to know."],
                    "zh": ["关于{name}：", "健康知识——{name}：", "{name}小知识："]}
CARE_OPENERS = {"en": ["Managing {name}.", "Treatment and prevention of {name}."],
                "zh": ["{name}的治疗与预防：", "如何应对{name}："]}


def opener(table: dict, lang: str, name: str, rng: random.Random) -> str:
    return rng.choice(table[lang]).format(name=name, Name=cap(name))


def condition_paragraphs(c: Condition, lang: str, rng: random.Random) -> list[str]:
    name = name_of(c, lang)
    about = [opener(OVERVIEW_OPENERS, lang, name, rng)] + [field(c, f, lang) for f in ("symptoms", "causes", "diagnosis")]
    care = [opener(CARE_OPENERS, lang, name, rng), field(c, "treatment", lang), field(c, "prevention", lang),
            urgent_line(c, lang, rng)]
    return [join(lang, about), join(lang, care)]


def drug_paragraph(d: Drug, lang: str) -> str:
    head = f"Medicine guide: {d.en}." if lang == "en" else f"用药小知识——{d.zh}："
    return join(lang, [head, drug_use(d, lang), drug_answer(d, "dose", lang), field(d, "caution", lang)])


def lab_paragraph(lab: LabTest, lang: str) -> str:
    if lang == "en":
        head = [f"Lab test: {lab.key}.", f"The usual adult reference range is {range_text(lab, lang)}."]
    else:
        head = [f"检验项目：{lab.zh}。", f"成人参考范围一般为{range_text(lab, lang)}。"]
    return join(lang, head + [field(lab, "high", lang), field(lab, "low", lang), RANGE_NOTE[lang]])


def interaction_paragraph(ix: Interaction, lang: str) -> str:
    a, b = pair_names(ix, lang)
    head = f"Drug interaction: {a} and {b}." if lang == "en" else f"药物相互作用：{a}与{b}。"
    return join(lang, [head, interaction_answer(ix, lang)])


def build_corpus(rng: random.Random) -> list[str]:
    lines = []
    for lang in LANGS:
        for c in train_conditions():
            lines += condition_paragraphs(c, lang, rng)
        lines += [drug_paragraph(d, lang) for d in DRUGS]
        lines += [lab_paragraph(lab, lang) for lab in LABS]
        lines += [interaction_paragraph(ix, lang) for ix in INTERACTIONS]
        lines += [tip[0] if lang == "en" else tip[1] for tip in HEALTH_TIPS]
    rng.shuffle(lines)
    return lines


# --------------------------------------------------------------------------------------
# sft_alpaca.jsonl and val_sft_alpaca.jsonl
# --------------------------------------------------------------------------------------

ASK_INSTRUCTIONS = {"en": ["Answer the patient's question.", "Answer the following health question accurately and simply."],
                    "zh": ["请回答患者的问题。", "请准确、通俗地回答以下健康问题。"]}
LAB_INSTRUCTIONS = {"en": ["Explain this lab result in plain language.", "Interpret the following test result for a patient."],
                    "zh": ["请用通俗的语言解释这项化验结果。", "请为患者解读以下检验结果。"]}
INTERACTION_INSTRUCTIONS = {"en": ["Check whether these two medicines interact and explain the risk."],
                            "zh": ["判断以下两种药物之间是否存在相互作用，并说明风险。"]}


def alpaca_row(question: str, answer: str, lang: str, rng: random.Random, p_input: float = 0.2) -> dict:
    # Some rows carry the question in `input` so both alpaca layouts are exercised.
    if rng.random() < p_input:
        return {"instruction": rng.choice(ASK_INSTRUCTIONS[lang]), "input": question, "output": answer}
    return {"instruction": question, "input": "", "output": answer}


def build_alpaca(rng: random.Random) -> list[dict]:
    rows = []
    for c in train_conditions():
        for lang in LANGS:
            for qtype in rng.sample(QTYPES, 3):
                rows.append(alpaca_row(condition_question(c, qtype, lang, rng), condition_answer(c, qtype, lang, rng), lang, rng))
    for d in DRUGS:
        for lang in LANGS:
            kind = rng.choice(["use", "dose", "caution"])
            question = rng.choice(DRUG_QUESTIONS[lang][kind]).format(drug=drug_name(d, lang))
            rows.append(alpaca_row(question, drug_answer(d, kind, lang), lang, rng))
    for i, lab in enumerate(LABS):
        lang = LANGS[i % 2]
        sex, value, status = sample_lab_value(lab, rng)
        rows.append({"instruction": rng.choice(LAB_INSTRUCTIONS[lang]), "input": lab_result_text(lab, sex, value, lang),
                     "output": lab_interpretation(lab, sex, value, status, lang)})
    for i, ix in enumerate(INTERACTIONS):
        lang = LANGS[i % 2]
        a, b = pair_names(ix, lang)
        pair = f"{a} and {b}" if lang == "en" else f"{a}和{b}"
        rows.append({"instruction": INTERACTION_INSTRUCTIONS[lang][0], "input": pair, "output": interaction_answer(ix, lang)})
    rng.shuffle(rows)
    return rows


def build_val_alpaca(rng: random.Random) -> list[dict]:
    rows = []
    for c in held_out_conditions():
        for lang in LANGS:
            for qtype in rng.sample(QTYPES, 3):
                question = condition_question(c, qtype, lang, rng, table=VAL_QUESTIONS)
                rows.append(alpaca_row(question, condition_answer(c, qtype, lang, rng), lang, rng))
    rng.shuffle(rows)
    return rows


# --------------------------------------------------------------------------------------
# sft_sharegpt.jsonl and sft_messages.jsonl
# --------------------------------------------------------------------------------------

DIAGNOSED_PREFIX = {"en": "I was recently diagnosed with {name}. ", "zh": "我最近被诊断为{name}。"}
DRUG_FOLLOW_UPS = {"en": {"dose": "How should I take it?", "caution": "Is there anything I should watch out for?"},
                   "zh": {"dose": "应该怎么服用？", "caution": "有什么需要注意的吗？"}}
LAB_OPENERS = {"en": "I just got my test results: {result}. What does this mean?", "zh": "我刚拿到化验结果：{result}。这是什么意思？"}
LAB_FOLLOW_UP = {"en": "What is the normal range for this test?", "zh": "这项检查的正常范围是多少？"}
DIALOGUE_TYPES = ("symptoms", "causes", "diagnosis", "treatment", "prevention", "urgent")


def condition_dialogue(c: Condition, lang: str, rng: random.Random, diagnosed: bool) -> list[tuple[str, str]]:
    """1-3 (user, assistant) turns about one condition; later turns refer back to it without naming it."""
    first_choices = [t for t in DIALOGUE_TYPES if not (diagnosed and t in ("symptoms", "prevention"))]
    first = rng.choice(first_choices)
    later = rng.sample([t for t in DIALOGUE_TYPES if t != first], rng.choice([0, 1, 1, 2]))
    if diagnosed:
        opening = DIAGNOSED_PREFIX[lang].format(name=name_of(c, lang)) + rng.choice(FOLLOW_UPS[lang][first])
    else:
        opening = condition_question(c, first, lang, rng)
    turns = [(opening, condition_answer(c, first, lang, rng))]
    turns += [(rng.choice(FOLLOW_UPS[lang][t]), condition_answer(c, t, lang, rng)) for t in later]
    return turns


def drug_dialogue(d: Drug, lang: str, rng: random.Random) -> list[tuple[str, str]]:
    turns = [(rng.choice(DRUG_QUESTIONS[lang]["use"]).format(drug=drug_name(d, lang)), drug_answer(d, "use", lang))]
    for kind in rng.sample(["dose", "caution"], rng.choice([0, 1, 2])):
        turns.append((DRUG_FOLLOW_UPS[lang][kind], drug_answer(d, kind, lang)))
    return turns


def lab_dialogue(lab: LabTest, lang: str, rng: random.Random) -> list[tuple[str, str]]:
    sex, value, status = sample_lab_value(lab, rng)
    turns = [(LAB_OPENERS[lang].format(result=lab_result_text(lab, sex, value, lang)),
              lab_interpretation(lab, sex, value, status, lang))]
    if rng.random() < 0.5:
        turns.append((LAB_FOLLOW_UP[lang], lab_range_answer(lab, lang)))
    return turns


def system_prompt(lang: str, rng: random.Random, p: float) -> str | None:
    return rng.choice(SYSTEM_PROMPTS[lang]) if rng.random() < p else None


def to_sharegpt(turns: list[tuple[str, str]], system: str | None) -> dict:
    conv = [{"from": "system", "value": system}] if system else []
    for user, assistant in turns:
        conv += [{"from": "human", "value": user}, {"from": "gpt", "value": assistant}]
    return {"conversations": conv}


def to_messages(turns: list[tuple[str, str]], system: str | None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    for user, assistant in turns:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": msgs}


def build_sharegpt(rng: random.Random) -> list[dict]:
    dialogues = [(condition_dialogue(c, lang, rng, diagnosed=False), lang) for c in train_conditions() for lang in LANGS]
    dialogues += [(drug_dialogue(d, lang, rng), lang) for d in DRUGS for lang in LANGS]
    rows = [to_sharegpt(turns, system_prompt(lang, rng, p=0.25)) for turns, lang in dialogues]
    rng.shuffle(rows)
    return rows


def build_messages(rng: random.Random) -> list[dict]:
    dialogues = [(condition_dialogue(c, lang, rng, diagnosed=True), lang) for c in train_conditions() for lang in LANGS]
    dialogues += [(lab_dialogue(lab, lang, rng), lang) for lab in LABS for lang in LANGS]
    rows = [to_messages(turns, system_prompt(lang, rng, p=0.35)) for turns, lang in dialogues]
    rng.shuffle(rows)
    return rows


# --------------------------------------------------------------------------------------
# toolcall.jsonl (glaive format)
# --------------------------------------------------------------------------------------


def schema(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"name": name, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required}}


TOOLS = {
    "calculate_bmi": schema(
        "calculate_bmi", "Calculate body mass index (BMI) from weight and height and return the WHO adult category.",
        {"weight_kg": {"type": "number", "description": "Body weight in kilograms"},
         "height_m": {"type": "number", "description": "Height in metres"}},
        ["weight_kg", "height_m"]),
    "lookup_drug_interaction": schema(
        "lookup_drug_interaction", "Look up the interaction between two medicines or substances.",
        {"drug_a": {"type": "string", "description": "English generic name of the first medicine or substance"},
         "drug_b": {"type": "string", "description": "English generic name of the second medicine or substance"}},
        ["drug_a", "drug_b"]),
    "find_lab_reference_range": schema(
        "find_lab_reference_range", "Return the usual adult reference range for a laboratory test.",
        {"test_name": {"type": "string", "description": "English name of the laboratory test"}},
        ["test_name"]),
    "schedule_appointment": schema(
        "schedule_appointment", "Book an outpatient appointment in a hospital department.",
        {"department": {"type": "string", "description": "Department or clinic name"},
         "date": {"type": "string", "description": "Date in YYYY-MM-DD format"},
         "time": {"type": "string", "description": "Time in 24-hour HH:MM format"},
         "reason": {"type": "string", "description": "Optional short reason for the visit"}},
        ["department", "date", "time"]),
    "search_medical_literature": schema(
        "search_medical_literature", "Search an index of plain-language medical summaries.",
        {"query": {"type": "string", "description": "Search query"},
         "max_results": {"type": "integer", "description": "Maximum number of results to return"}},
        ["query"]),
}

DEPARTMENTS = [("cardiology", "心内科"), ("dermatology", "皮肤科"), ("endocrinology", "内分泌科"),
               ("gastroenterology", "消化内科"), ("respiratory medicine", "呼吸内科"), ("neurology", "神经内科"),
               ("orthopaedics", "骨科"), ("ophthalmology", "眼科"), ("general practice", "全科医学科"),
               ("nephrology", "肾内科"), ("paediatrics", "儿科"), ("psychiatry", "精神心理科")]
NUTRITION = ("nutrition clinic", "营养科")
TIMES = ["08:30", "09:00", "09:30", "10:00", "10:30", "11:00", "14:00", "14:30", "15:00", "15:30", "16:00"]
FIRST_DAY = (2025, 3, 3)

BMI_QUESTIONS = {"en": ["I weigh {w} kg and I'm {h} m tall. What's my BMI?",
                        "Can you calculate the BMI for someone who is {cm} cm tall and weighs {w} kg?",
                        "My height is {h} m and my weight is {w} kg. Am I in a healthy weight range?"],
                 "zh": ["我身高{cm}厘米，体重{w}公斤，帮我算一下BMI。", "体重{w}千克、身高{h}米，BMI是多少？属于什么范围？"]}
BMI_ADVICE = {
    "underweight": ("A BMI below 18.5 can reflect undernutrition, so it may be worth discussing your diet and weight with a doctor.",
                    "BMI低于18.5可能提示营养不足，建议与医生讨论饮食和体重情况。"),
    "normal weight": ("Keep up balanced eating and regular activity to stay in this range.",
                      "继续保持均衡饮食和规律运动，维持在这个范围。"),
    "overweight": ("Gradual weight loss through diet changes and more activity lowers the risk of diabetes and heart disease.",
                   "通过调整饮食和增加运动逐步减重，可以降低糖尿病和心脏病的风险。"),
    "obesity": ("A doctor can help with a structured weight-management plan and check for related conditions such as diabetes and high blood pressure.",
                "医生可以帮助制定系统的体重管理计划，并筛查糖尿病、高血压等相关疾病。"),
}
WHO_ZH = {"underweight": "体重过低", "normal weight": "正常体重", "overweight": "超重", "obesity": "肥胖"}
BMI_CAVEAT = {"en": "BMI does not distinguish muscle from fat, so waist size and overall health matter too.",
              "zh": "BMI不能区分肌肉和脂肪，还需要结合腰围和整体健康状况判断。"}


def bmi_value(weight_kg: float, height_m: float) -> float:
    """BMI = weight / height², rounded to one decimal like clinical reports."""
    return round(weight_kg / height_m**2, 1)


def who_category(bmi: float) -> str:
    """WHO adult cut-offs: <18.5, 18.5-24.9, 25-29.9, >=30."""
    return "underweight" if bmi < 18.5 else "normal weight" if bmi < 25 else "overweight" if bmi < 30 else "obesity"


def china_category(bmi: float) -> str:
    """Chinese adult cut-offs (WS/T 428): <18.5, 18.5-23.9, 24-27.9, >=28."""
    return "体重过低" if bmi < 18.5 else "正常" if bmi < 24 else "超重" if bmi < 28 else "肥胖"


def call(name: str, arguments: dict) -> dict:
    return {"from": "function_call", "value": json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)}


def observation(result: dict) -> dict:
    return {"from": "observation", "value": json.dumps(result, ensure_ascii=False)}


def human(text: str) -> dict:
    return {"from": "human", "value": text}


def gpt(text: str) -> dict:
    return {"from": "gpt", "value": text}


def tool_row(conversations: list[dict], used: list[str], rng: random.Random) -> dict:
    """Declare the tools a row uses plus a few distractors, in shuffled order."""
    others = [t for t in TOOLS if t not in used]
    names = used + rng.sample(others, rng.randint(1, min(2, len(others))))
    rng.shuffle(names)
    return {"conversations": conversations, "tools": json.dumps([TOOLS[n] for n in names], ensure_ascii=False)}


def random_body(rng: random.Random) -> tuple[int, float]:
    return rng.randint(42, 118), rng.randint(150, 192) / 100


def bmi_turns(weight: int, height: float, lang: str, rng: random.Random) -> tuple[list[dict], str]:
    """function_call + observation for one BMI computation, and the assistant's explanation of it."""
    bmi = bmi_value(weight, height)
    cat = who_category(bmi)
    turns = [call("calculate_bmi", {"weight_kg": weight, "height_m": height}), observation({"bmi": bmi, "category": cat})]
    if lang == "en":
        text = join(lang, [f"Your BMI is {bmi} kg/m², which is in the {cat} range by WHO adult categories.",
                           BMI_ADVICE[cat][0], BMI_CAVEAT[lang]])
    else:
        text = join(lang, [f"根据计算，您的BMI为{bmi} kg/m²，按世界卫生组织成人标准属于{WHO_ZH[cat]}。",
                           f"按中国成人标准（BMI 24.0–27.9为超重，≥28.0为肥胖），属于{china_category(bmi)}。",
                           BMI_ADVICE[cat][1], BMI_CAVEAT[lang]])
    return turns, text


def bmi_row(lang: str, rng: random.Random) -> dict:
    weight, height = random_body(rng)
    question = rng.choice(BMI_QUESTIONS[lang]).format(w=weight, h=f"{height:.2f}", cm=round(height * 100))
    turns, text = bmi_turns(weight, height, lang, rng)
    return tool_row([human(question), *turns, gpt(text)], ["calculate_bmi"], rng)


INTERACTION_QUESTIONS = {"en": ["Is it safe to take {a} with {b}?", "Do {a} and {b} interact?", "Can I take {a} and {b} together?"],
                         "zh": ["{a}和{b}可以一起吃吗？", "{a}与{b}有相互作用吗？"]}


def interaction_row(ix: Interaction, lang: str, rng: random.Random) -> dict:
    a, b = pair_names(ix, lang)
    result = {"drug_a": ix.drug_a, "drug_b": ix.drug_b, "severity": ix.severity, "effect": ix.effect, "advice": ix.advice}
    conv = [human(rng.choice(INTERACTION_QUESTIONS[lang]).format(a=a, b=b)),
            call("lookup_drug_interaction", {"drug_a": ix.drug_a, "drug_b": ix.drug_b}), observation(result),
            gpt(join(lang, [interaction_answer(ix, lang), closer(lang, rng, p=0.5)]))]
    return tool_row(conv, ["lookup_drug_interaction"], rng)


LAB_RANGE_QUESTIONS = {"en": ["What is the normal range for {test}?", "My report lists {test}. What range is considered normal?"],
                       "zh": ["{test}的正常范围是多少？", "化验单上的{test}，正常值应该是多少？"]}
LAB_VALUE_QUESTIONS = {"en": ["Here is my result — {result}. Is that normal?"], "zh": ["我的检查结果：{result}，正常吗？"]}


def lab_row(lab: LabTest, lang: str, with_value: bool, rng: random.Random) -> dict:
    lookup = [call("find_lab_reference_range", {"test_name": lab.key}),
              observation({"test": lab.key, "unit": lab.unit, "reference_range": range_text(lab, "en"),
                           "note": "Reference ranges vary between laboratories."})]
    if with_value:
        sex, value, status = sample_lab_value(lab, rng)
        question = LAB_VALUE_QUESTIONS[lang][0].format(result=lab_result_text(lab, sex, value, lang))
        answer = lab_interpretation(lab, sex, value, status, lang)
    else:
        question = rng.choice(LAB_RANGE_QUESTIONS[lang]).format(test=lab_name(lab, lang))
        answer = lab_range_answer(lab, lang)
    return tool_row([human(question), *lookup, gpt(answer)], ["find_lab_reference_range"], rng)


APPOINTMENT_QUESTIONS = {"en": ["Please book me an appointment in {dept} on {date} at {time}.",
                                "Can you schedule a {dept} visit for {date}, {time}?"],
                         "zh": ["帮我预约{date} {time}的{dept}门诊。", "我想挂{dept}的号，时间是{date} {time}。"]}


def random_slot(rng: random.Random) -> tuple[str, str]:
    year, month, day = FIRST_DAY
    offset = rng.randint(0, 27)  # stays inside March 2025, so plain day arithmetic is valid
    return f"{year}-{month:02d}-{day + offset:02d}", rng.choice(TIMES)


def appointment_id(rng: random.Random) -> str:
    return f"APT-{rng.randint(10000, 99999)}"


def confirmation(dept: str, date: str, time: str, apt: str, lang: str) -> str:
    if lang == "en":
        return (f"Your {dept} appointment is confirmed for {date} at {time}. Your appointment ID is {apt}. "
                "Please bring your ID, any recent test results and a list of your medicines.")
    return f"已为您预约{date} {time}的{dept}门诊，预约号为{apt}。请携带身份证件、近期检查结果和用药清单。"


def booking_turns(dept: str, date: str, time: str, lang: str, rng: random.Random) -> tuple[list[dict], str]:
    apt = appointment_id(rng)
    turns = [call("schedule_appointment", {"department": dept, "date": date, "time": time}),
             observation({"status": "confirmed", "appointment_id": apt, "department": dept, "date": date, "time": time})]
    return turns, confirmation(dept, date, time, apt, lang)


def appointment_row(lang: str, rng: random.Random) -> dict:
    dept = rng.choice(DEPARTMENTS)[0 if lang == "en" else 1]
    date, time = random_slot(rng)
    turns, text = booking_turns(dept, date, time, lang, rng)
    question = rng.choice(APPOINTMENT_QUESTIONS[lang]).format(dept=dept, date=date, time=time)
    return tool_row([human(question), *turns, gpt(text)], ["schedule_appointment"], rng)


def appointment_unavailable_row(lang: str, rng: random.Random) -> dict:
    """The slot is taken; the assistant offers alternatives and books the one the user picks."""
    dept = rng.choice(DEPARTMENTS)[0 if lang == "en" else 1]
    date, time = random_slot(rng)
    free = sorted(rng.sample([t for t in TIMES if t != time], 2))
    first_call = [call("schedule_appointment", {"department": dept, "date": date, "time": time}),
                  observation({"status": "unavailable", "department": dept, "date": date, "requested_time": time,
                               "available_times": free})]
    if lang == "en":
        offer = f"Sorry, {time} is not available in {dept} on {date}. Open slots that day are {free[0]} and {free[1]}. Would you like one of them?"
        pick = f"{free[1]} works for me."
    else:
        offer = f"抱歉，{date} {time}的{dept}号源已满。当天可预约的时间有{free[0]}和{free[1]}，您想预约哪一个？"
        pick = f"那就{free[1]}吧。"
    turns, text = booking_turns(dept, date, free[1], lang, rng)
    question = rng.choice(APPOINTMENT_QUESTIONS[lang]).format(dept=dept, date=date, time=time)
    conv = [human(question), *first_call, gpt(offer), human(pick), *turns, gpt(text)]
    return tool_row(conv, ["schedule_appointment"], rng)


def appointment_clarify_row(lang: str, rng: random.Random) -> dict:
    """The user gives no date or time; the assistant asks before calling the tool."""
    dept = rng.choice(DEPARTMENTS)[0 if lang == "en" else 1]
    date, time = random_slot(rng)
    if lang == "en":
        ask, ask_back, when = f"I'd like to see someone in {dept}.", "Sure. Which date and time would suit you?", f"{date} at {time}, please."
    else:
        ask, ask_back, when = f"我想挂一个{dept}的号。", "好的，请问您希望预约哪一天、几点？", f"{date} {time}。"
    turns, text = booking_turns(dept, date, time, lang, rng)
    return tool_row([human(ask), gpt(ask_back), human(when), *turns, gpt(text)], ["schedule_appointment"], rng)


LITERATURE_QUESTIONS = {"en": ["Search the medical literature for how {name} is treated and prevented.",
                               "Find me some reading on managing {name}."],
                        "zh": ["帮我查一下关于{name}治疗和预防的资料。", "检索一下{name}的相关医学资料。"]}


def literature_row(c: Condition, lang: str, rng: random.Random) -> dict:
    name = name_of(c, lang)
    if lang == "en":
        query = f"{c.en} treatment and prevention"
        titles = [f"Treatment of {c.en}: a plain-language summary", f"Preventing {c.en}"]
        intro = "Here is what the summaries I found say."
    else:
        query = f"{c.zh} 治疗 预防"
        titles = [f"{c.zh}的治疗：通俗版综述", f"{c.zh}的预防"]
        intro = "检索到的资料要点如下。"
    summaries = [field(c, "treatment", lang), field(c, "prevention", lang)]
    # The index is synthetic; saying so in the result keeps the sample from looking like real citations.
    result = {"source": "medlab synthetic sample index",
              "results": [{"title": t, "summary": s} for t, s in zip(titles, summaries)]}
    conv = [human(rng.choice(LITERATURE_QUESTIONS[lang]).format(name=name)),
            call("search_medical_literature", {"query": query, "max_results": 2}), observation(result),
            gpt(join(lang, [intro, *summaries, CLOSERS[lang][2]]))]
    return tool_row(conv, ["search_medical_literature"], rng)


def bmi_then_booking_row(lang: str, rng: random.Random) -> dict:
    """Two tool calls in one turn: compute BMI, then book the nutrition clinic."""
    weight, height = random_body(rng)
    date, time = random_slot(rng)
    dept = NUTRITION[0 if lang == "en" else 1]
    if lang == "en":
        ask = f"I'm {height:.2f} m tall and weigh {weight} kg. Please work out my BMI and book me into the {dept} on {date} at {time}."
    else:
        ask = f"我身高{height:.2f}米，体重{weight}公斤。请帮我算一下BMI，并预约{date} {time}的{dept}。"
    bmi_part, bmi_text = bmi_turns(weight, height, lang, rng)
    book_part, book_text = booking_turns(dept, date, time, lang, rng)
    return tool_row([human(ask), *bmi_part, *book_part, gpt(join(lang, [bmi_text, book_text]))],
                    ["calculate_bmi", "schedule_appointment"], rng)


def direct_answer_row(c: Condition, lang: str, rng: random.Random) -> dict:
    """Tools are offered but none fits the question, so the assistant answers from knowledge."""
    qtype = rng.choice(DIALOGUE_TYPES)
    conv = [human(condition_question(c, qtype, lang, rng)), gpt(condition_answer(c, qtype, lang, rng))]
    return tool_row(conv, [], rng)


def build_toolcall(rng: random.Random) -> list[dict]:
    conds = train_conditions()
    rows = [bmi_row(LANGS[i % 2], rng) for i in range(24)]
    rows += [interaction_row(ix, lang, rng) for ix in INTERACTIONS for lang in LANGS]
    rows += [lab_row(lab, LANGS[i % 2], with_value=i % 3 == 0, rng=rng) for i, lab in enumerate(LABS)]
    rows += [appointment_row(LANGS[i % 2], rng) for i in range(10)]
    rows += [appointment_unavailable_row(lang, rng) for lang in LANGS]
    rows += [appointment_clarify_row(lang, rng) for lang in LANGS]
    rows += [literature_row(c, LANGS[i % 2], rng) for i, c in enumerate(rng.sample(conds, 10))]
    rows += [bmi_then_booking_row(LANGS[i % 2], rng) for i in range(4)]
    rows += [direct_answer_row(c, LANGS[i % 2], rng) for i, c in enumerate(rng.sample(conds, 20))]
    rng.shuffle(rows)
    return rows


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def rng_for(name: str) -> random.Random:
    # One stream per file, so changing one builder leaves the other files byte-identical.
    return random.Random(f"{SEED}:{name}")


def main(out_dir: Path = SAMPLE_DIR) -> dict[str, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_lines(out_dir / "medical_corpus.txt", corpus := build_corpus(rng_for("corpus")))
    outputs = {"medical_corpus.txt": len(corpus)}
    for name, build in [("sft_alpaca.jsonl", build_alpaca), ("sft_sharegpt.jsonl", build_sharegpt),
                        ("sft_messages.jsonl", build_messages), ("toolcall.jsonl", build_toolcall),
                        ("val_sft_alpaca.jsonl", build_val_alpaca)]:
        rows = build(rng_for(name))
        write_jsonl(out_dir / name, rows)
        outputs[name] = len(rows)
    for name, count in outputs.items():
        print(f"{name:24s} {count:4d} rows  {(out_dir / name).stat().st_size / 1024:6.1f} KB")
    return outputs


if __name__ == "__main__":
    main()
